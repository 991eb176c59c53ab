package node

import (
	"fmt"
	"net/url"
	"regexp"
	"strings"
)

// busPrefix matches a NATS subject prefix: one or more tokens of letters,
// digits, '-' and '_', separated by dots.
var busPrefix = regexp.MustCompile(`^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$`)

// splitBusURL separates a --bus URL's servers from its options. The only
// option is prefix, the subjects' prefix (default "thingline"): the nodes
// of one deployment share it, and deployments (or test runs) sharing a
// NATS server each take their own, so that none claims another's device
// sessions or hears its notices.
//
//	nats://h1:4222,nats://h2:4222?prefix=plant_a
func splitBusURL(u string) (servers, prefix string, err error) {
	i := strings.LastIndexByte(u, '?')
	if i < 0 {
		return u, "", nil
	}
	q, err := url.ParseQuery(u[i+1:])
	if err != nil {
		return "", "", fmt.Errorf("options %q: %w", u[i+1:], err)
	}
	for k := range q {
		if k != "prefix" {
			return "", "", fmt.Errorf("unknown option %q (only prefix is known)", k)
		}
	}
	prefix = q.Get("prefix")
	if !busPrefix.MatchString(prefix) {
		return "", "", fmt.Errorf("prefix %q: want letters, digits, '-' and '_', in dot-separated tokens", prefix)
	}
	return u[:i], prefix, nil
}
