package gateway

import "strings"

// ThingsBoard's device topics (MqttTopics.java): the v1 long forms and the v2
// short aliases. Only JSON payloads are supported: the protobuf-forced "/p"
// variants are unknown topics here.

// pubKind is what a device PUBLISH asks for.
type pubKind uint8

const (
	pubUnknown     pubKind = iota
	pubTelemetry           // v1/devices/me/telemetry, v2/t
	pubAttributes          // v1/devices/me/attributes, v2/a
	pubAttrRequest         // v1/devices/me/attributes/request/{id}, v2/a/req/{id}
	pubRPCResponse         // the device answers a server-side RPC: v1/devices/me/rpc/response/{id}, v2/r/res/{id}
	pubRPCRequest          // client-side RPC: v1/devices/me/rpc/request/{id}
	pubClaim               // v1/devices/me/claim
	pubProvision           // /provision/request
	pubFWRequest           // v2/fw/request/{id}/chunk/{n} (gateway/ota.go)
	pubSWRequest           // v2/sw/request/{id}/chunk/{n}
	pubCertRequest         // certificate rotation: v1/devices/me/cert/request
)

// style is the topic family a device used, so answers go back in kind.
type style uint8

const (
	styleV1 style = iota
	styleV2
)

const (
	v1Prefix = "v1/devices/me/"
)

// classifyPublish maps a PUBLISH topic to its kind, style and request id.
func classifyPublish(topic string) (pubKind, style, string) {
	if rest, ok := strings.CutPrefix(topic, v1Prefix); ok {
		switch rest {
		case "telemetry":
			return pubTelemetry, styleV1, ""
		case "attributes":
			return pubAttributes, styleV1, ""
		case "claim":
			return pubClaim, styleV1, ""
		case "cert/request":
			return pubCertRequest, styleV1, ""
		}
		if id, ok := strings.CutPrefix(rest, "attributes/request/"); ok && validID(id) {
			return pubAttrRequest, styleV1, id
		}
		if id, ok := strings.CutPrefix(rest, "rpc/response/"); ok && validID(id) {
			return pubRPCResponse, styleV1, id
		}
		if id, ok := strings.CutPrefix(rest, "rpc/request/"); ok && validID(id) {
			return pubRPCRequest, styleV1, id
		}
		return pubUnknown, styleV1, ""
	}
	if rest, ok := strings.CutPrefix(topic, "v2/"); ok {
		switch rest {
		case "t", "t/j":
			return pubTelemetry, styleV2, ""
		case "a", "a/j":
			return pubAttributes, styleV2, ""
		}
		if id, ok := cutEither(rest, "a/req/j/", "a/req/"); ok && validID(id) {
			return pubAttrRequest, styleV2, id
		}
		if id, ok := cutEither(rest, "r/res/j/", "r/res/"); ok && validID(id) {
			return pubRPCResponse, styleV2, id
		}
		if kind, id, ok := classifyOTA(rest); ok {
			return kind, styleV2, id
		}
		return pubUnknown, styleV2, ""
	}
	if topic == "/provision/request" {
		return pubProvision, styleV1, ""
	}
	return pubUnknown, styleV1, ""
}

func cutEither(s, long, short string) (string, bool) {
	if r, ok := strings.CutPrefix(s, long); ok {
		return r, true
	}
	return strings.CutPrefix(s, short)
}

// validID accepts ThingsBoard's request ids: decimal integers.
func validID(id string) bool {
	if id == "" || len(id) > 10 {
		return false
	}
	for i := 0; i < len(id); i++ {
		if id[i] < '0' || id[i] > '9' {
			return false
		}
	}
	return true
}

// subKind is a subscription the gateway can serve.
type subKind uint8

const (
	subAttributes    subKind = iota // shared attribute updates
	subAttrResponse                 // answers to attribute requests
	subRPCRequest                   // server-side RPC requests
	subRPCResponse                  // answers to client-side RPC
	subFirmware                     // firmware chunks and errors (gateway/ota.go)
	subCertResponse                 // answers to certificate rotation requests
	subClaimResponse                // the outcome of a claim request (gateway/claim.go)
	subOther                        // accepted but nothing is ever sent (OTA, provisioning)
	numSubKinds
)

// classifyFilter maps a SUBSCRIBE filter to what it receives.
func classifyFilter(f string) (subKind, style, bool) {
	switch f {
	case v1Prefix + "attributes":
		return subAttributes, styleV1, true
	case "v2/a", "v2/a/j":
		return subAttributes, styleV2, true
	case v1Prefix + "attributes/response/+", v1Prefix + "attributes/response/#":
		return subAttrResponse, styleV1, true
	case "v2/a/res/+", "v2/a/res/j/+", "v2/a/res/#":
		return subAttrResponse, styleV2, true
	case v1Prefix + "rpc/request/+", v1Prefix + "rpc/request/#":
		return subRPCRequest, styleV1, true
	case "v2/r/req/+", "v2/r/req/j/+", "v2/r/req/#":
		return subRPCRequest, styleV2, true
	case v1Prefix + "rpc/response/+", v1Prefix + "rpc/response/#":
		return subRPCResponse, styleV1, true
	case "v2/fw/response/+/chunk/+", "v2/fw/error", "v2/fw/response/+", "v2/fw/response/#":
		// The last two are what ThingsBoard's SDKs subscribe to; chunks
		// are sent whatever the filter (gateway/ota.go).
		return subFirmware, styleV2, true
	case v1Prefix + "cert/response":
		return subCertResponse, styleV1, true
	case claimResponseTopic:
		return subClaimResponse, styleV1, true
	case "/provision/response", "v2/sw/response/+/chunk/+", "v2/sw/error":
		return subOther, styleV1, true
	}
	return 0, 0, false
}

func attrResponseTopic(st style, id string) string {
	if st == styleV2 {
		return "v2/a/res/" + id
	}
	return v1Prefix + "attributes/response/" + id
}

func rpcRequestTopic(st style, id string) string {
	if st == styleV2 {
		return "v2/r/req/" + id
	}
	return v1Prefix + "rpc/request/" + id
}

func rpcResponseTopic(id string) string { return v1Prefix + "rpc/response/" + id }

func attributesTopic(st style) string {
	if st == styleV2 {
		return "v2/a"
	}
	return v1Prefix + "attributes"
}
