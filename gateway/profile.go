package gateway

import (
	"fmt"
	"regexp"
)

// Profile is the device-profile policy applied to the devices of a CA.
type Profile struct {
	Name string
	// CNRegex derives the device name from the leaf's CN: group(1) of the
	// first match (ThingsBoard's find()), or the whole match without a group.
	// Empty means "(.*)".
	CNRegex string
	// AllowCreate lets an unknown name be created on its first connection.
	// Being a bool it cannot default to true by itself: New replaces a zero
	// Profile with DefaultProfile, and flags should start from it.
	AllowCreate bool
	// DisconnectOnBadInput closes an MQTT 3.1.1 session on a refused message
	// instead of acknowledging and dropping it (MQTT 5 always gets a PUBACK
	// reason code and keeps the session).
	DisconnectOnBadInput bool
	// MaxPayload is the largest accepted PUBLISH payload; 0 means 65536.
	MaxPayload int
}

// DefaultProfile is the policy of a deployment with no configuration.
func DefaultProfile() Profile {
	return Profile{Name: "default", CNRegex: "(.*)", AllowCreate: true, MaxPayload: 65536}
}

// compiledProfile is a Profile ready for use.
type compiledProfile struct {
	Profile
	re *regexp.Regexp
}

func compileProfile(p Profile) (*compiledProfile, error) {
	if p == (Profile{}) {
		p = DefaultProfile()
	}
	if p.Name == "" {
		p.Name = "default"
	}
	if p.CNRegex == "" {
		p.CNRegex = "(.*)"
	}
	if p.MaxPayload <= 0 {
		p.MaxPayload = 65536
	}
	re, err := regexp.Compile(p.CNRegex)
	if err != nil {
		return nil, fmt.Errorf("gateway: profile %s: bad CN regex: %w", p.Name, err)
	}
	return &compiledProfile{Profile: p, re: re}, nil
}

// deviceName applies the CN regex; ok is false when it does not match or
// yields an empty name.
func (p *compiledProfile) deviceName(cn string) (string, bool) {
	m := p.re.FindStringSubmatch(cn)
	if m == nil {
		return "", false
	}
	name := m[0]
	if len(m) > 1 {
		name = m[1]
	}
	return name, name != ""
}
