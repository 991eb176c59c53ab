package wifiprov

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/protobuf/encoding/protowire"
)

// User–node association over the custom endpoint "cloud_user_assoc", as ESP
// RainMaker does it (esp_rmaker_user_mapping.proto, package rainmaker): the
// app sends the user's id and a one-time secret; the device keeps them,
// answers its node id, and forwards both to the cloud once online, where
// they must match the app's own request.
//
//	enum RMakerConfigStatus { Success=0; InvalidParam=1; InvalidState=2; }
//	message CmdSetUserMapping { string UserID=1; string SecretKey=2; }
//	message RespSetUserMapping { RMakerConfigStatus Status=1; string NodeId=2; }
//	enum RMakerConfigMsgType { TypeCmdSetUserMapping=0; TypeRespSetUserMapping=1; }
//	message RMakerConfigPayload { RMakerConfigMsgType msg=1;
//	    oneof payload { CmdSetUserMapping cmd_set_user_mapping=10; RespSetUserMapping resp_set_user_mapping=11; } }
//
// The messages are two strings each, so they are encoded with protowire
// rather than generated code.

// AssocEndpoint is the custom endpoint's name.
const AssocEndpoint = "cloud_user_assoc"

// Association statuses (RMakerConfigStatus).
const (
	AssocSuccess      = 0
	AssocInvalidParam = 1
	AssocInvalidState = 2
)

const (
	assocCmd  = 0
	assocResp = 1
)

// Limits of an association's fields: RainMaker's user ids are short
// strings, and the secret is a one-time random string.
const maxAssocField = 128

// EncodeAssocRequest encodes CmdSetUserMapping in its payload.
func EncodeAssocRequest(userID, secret string) []byte {
	var inner []byte
	inner = protowire.AppendTag(inner, 1, protowire.BytesType)
	inner = protowire.AppendString(inner, userID)
	inner = protowire.AppendTag(inner, 2, protowire.BytesType)
	inner = protowire.AppendString(inner, secret)
	return wrapAssoc(assocCmd, 10, inner)
}

// EncodeAssocResponse encodes RespSetUserMapping in its payload.
func EncodeAssocResponse(status int, nodeID string) []byte {
	var inner []byte
	if status != 0 {
		inner = protowire.AppendTag(inner, 1, protowire.VarintType)
		inner = protowire.AppendVarint(inner, uint64(status))
	}
	inner = protowire.AppendTag(inner, 2, protowire.BytesType)
	inner = protowire.AppendString(inner, nodeID)
	return wrapAssoc(assocResp, 11, inner)
}

func wrapAssoc(msg uint64, field protowire.Number, inner []byte) []byte {
	var b []byte
	if msg != 0 {
		b = protowire.AppendTag(b, 1, protowire.VarintType)
		b = protowire.AppendVarint(b, msg)
	}
	b = protowire.AppendTag(b, field, protowire.BytesType)
	return protowire.AppendBytes(b, inner)
}

// fields walks a message, calling fn for each field it knows; unknown
// fields are skipped as protobuf requires.
func fields(b []byte, fn func(num protowire.Number, typ protowire.Type, v []byte, n uint64) error) error {
	for len(b) > 0 {
		num, typ, l := protowire.ConsumeTag(b)
		if l < 0 {
			return errors.New("wifiprov: association: bad tag")
		}
		b = b[l:]
		var v []byte
		var n uint64
		switch typ {
		case protowire.VarintType:
			n, l = protowire.ConsumeVarint(b)
		case protowire.BytesType:
			v, l = protowire.ConsumeBytes(b)
		default:
			l = protowire.ConsumeFieldValue(num, typ, b)
		}
		if l < 0 {
			return errors.New("wifiprov: association: truncated field")
		}
		b = b[l:]
		if err := fn(num, typ, v, n); err != nil {
			return err
		}
	}
	return nil
}

// decodeAssoc returns the message type and the embedded message of field.
func decodeAssoc(b []byte, field protowire.Number) (msg uint64, inner []byte, found bool, err error) {
	err = fields(b, func(num protowire.Number, typ protowire.Type, v []byte, n uint64) error {
		switch {
		case num == 1 && typ == protowire.VarintType:
			msg = n
		case num == field && typ == protowire.BytesType:
			inner, found = v, true
		}
		return nil
	})
	return msg, inner, found, err
}

// DecodeAssocRequest decodes what the app sent.
func DecodeAssocRequest(b []byte) (userID, secret string, err error) {
	msg, inner, ok, err := decodeAssoc(b, 10)
	if err != nil {
		return "", "", err
	}
	if msg != assocCmd || !ok {
		return "", "", errors.New("wifiprov: association: not a set-user-mapping command")
	}
	err = fields(inner, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) error {
		if typ != protowire.BytesType {
			return nil
		}
		switch num {
		case 1:
			userID = string(v)
		case 2:
			secret = string(v)
		}
		return nil
	})
	if err != nil {
		return "", "", err
	}
	if userID == "" || secret == "" || len(userID) > maxAssocField || len(secret) > maxAssocField {
		return "", "", fmt.Errorf("wifiprov: association: user id and secret must be 1 to %d bytes", maxAssocField)
	}
	return userID, secret, nil
}

// DecodeAssocResponse decodes what the device answered.
func DecodeAssocResponse(b []byte) (status int, nodeID string, err error) {
	msg, inner, ok, err := decodeAssoc(b, 11)
	if err != nil {
		return 0, "", err
	}
	if msg != assocResp || !ok {
		return 0, "", errors.New("wifiprov: association: not a set-user-mapping response")
	}
	err = fields(inner, func(num protowire.Number, typ protowire.Type, v []byte, n uint64) error {
		switch {
		case num == 1 && typ == protowire.VarintType:
			status = int(n)
		case num == 2 && typ == protowire.BytesType:
			nodeID = string(v)
		}
		return nil
	})
	return status, nodeID, err
}

// Associate sends the user's id and secret to the device's
// cloud_user_assoc endpoint and returns the node id it answered.
func (c *Client) Associate(ctx context.Context, userID, secret string) (string, error) {
	resp, err := c.Custom(ctx, AssocEndpoint, EncodeAssocRequest(userID, secret))
	if err != nil {
		return "", fmt.Errorf("wifiprov: %s: %w", AssocEndpoint, err)
	}
	status, node, err := DecodeAssocResponse(resp)
	if err != nil {
		return "", err
	}
	if status != AssocSuccess {
		return "", fmt.Errorf("wifiprov: %s: device answered status %d", AssocEndpoint, status)
	}
	return node, nil
}
