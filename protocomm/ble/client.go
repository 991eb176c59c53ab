package ble

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/godbus/dbus/v5"
)

// DialOptions tune Dial.
type DialOptions struct {
	// ServiceUUID defaults to DefaultServiceUUID.
	ServiceUUID string
	// Adapter selects the controller ("hci0"); empty means the first.
	Adapter string
}

// Client is the central side: connected to one device, with its
// endpoints found through their user-description descriptors.
type Client struct {
	conn   *dbus.Conn
	device dbus.ObjectPath
	chars  map[string]dbus.ObjectPath
}

// Dial scans for the device advertising name, connects and maps endpoint
// names to characteristics. Like esp_prov, it does not trust the UUIDs but
// reads each characteristic's 0x2901 descriptor.
func Dial(ctx context.Context, name string, opts DialOptions) (*Client, error) {
	if opts.ServiceUUID == "" {
		opts.ServiceUUID = DefaultServiceUUID
	}
	if err := checkUUID(opts.ServiceUUID); err != nil {
		return nil, err
	}
	conn, err := systemBus()
	if err != nil {
		return nil, err
	}
	c := &Client{conn: conn, chars: map[string]dbus.ObjectPath{}}
	if err := c.dial(ctx, name, opts); err != nil {
		conn.Close()
		return nil, err
	}
	return c, nil
}

func (c *Client) dial(ctx context.Context, name string, opts DialOptions) error {
	adapter, err := findAdapter(ctx, c.conn, opts.Adapter, ifaceAdapter)
	if err != nil {
		return err
	}
	ad := c.conn.Object(bluezBus, adapter)
	_ = ad.CallWithContext(ctx, ifaceAdapter+".SetDiscoveryFilter", 0,
		map[string]dbus.Variant{"Transport": dbus.MakeVariant("le")}).Err
	if err := ad.CallWithContext(ctx, ifaceAdapter+".StartDiscovery", 0).Err; err != nil {
		return fmt.Errorf("ble: starting discovery on %s: %w", adapter, err)
	}
	defer ad.Call(ifaceAdapter+".StopDiscovery", 0)

	// BlueZ reports devices as objects; poll them rather than juggle
	// InterfacesAdded signals, the scan takes seconds anyway.
	if c.device, err = c.waitFor(ctx, func(objs managedObjects) (dbus.ObjectPath, bool) {
		for p, ifs := range objs {
			d, ok := ifs[ifaceDevice]
			if !ok || !strings.HasPrefix(string(p), string(adapter)+"/") {
				continue
			}
			if n, _ := d["Name"].Value().(string); n == name {
				return p, true
			}
		}
		return "", false
	}); err != nil {
		return fmt.Errorf("ble: looking for %q: %w", name, err)
	}
	dev := c.conn.Object(bluezBus, c.device)
	if err := dev.CallWithContext(ctx, ifaceDevice+".Connect", 0).Err; err != nil {
		return fmt.Errorf("ble: connecting to %q: %w", name, err)
	}
	svcUUID := strings.ToLower(opts.ServiceUUID)
	var objs managedObjects
	if _, err := c.waitFor(ctx, func(o managedObjects) (dbus.ObjectPath, bool) {
		resolved, _ := o[c.device][ifaceDevice]["ServicesResolved"].Value().(bool)
		objs = o
		return "", resolved
	}); err != nil {
		return fmt.Errorf("ble: resolving services of %q: %w", name, err)
	}
	for p, ifs := range objs {
		d, ok := ifs[ifaceDesc]
		if !ok || !strings.HasPrefix(string(p), string(c.device)+"/") {
			continue
		}
		if u, _ := d["UUID"].Value().(string); !strings.EqualFold(u, UserDescriptionUUID) {
			continue
		}
		cp, _ := d["Characteristic"].Value().(dbus.ObjectPath)
		sp, _ := objs[cp][ifaceChar]["Service"].Value().(dbus.ObjectPath)
		if u, _ := objs[sp][ifaceService]["UUID"].Value().(string); !strings.EqualFold(u, svcUUID) {
			continue
		}
		var label []byte
		if err := c.conn.Object(bluezBus, p).CallWithContext(ctx, ifaceDesc+".ReadValue", 0,
			map[string]dbus.Variant{}).Store(&label); err != nil {
			return fmt.Errorf("ble: reading endpoint name: %w", err)
		}
		c.chars[string(label)] = cp
	}
	if len(c.chars) == 0 {
		return fmt.Errorf("ble: %q has no provisioning service %s", name, svcUUID)
	}
	return nil
}

func (c *Client) waitFor(ctx context.Context, match func(managedObjects) (dbus.ObjectPath, bool)) (dbus.ObjectPath, error) {
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		objs, err := getObjects(ctx, c.conn)
		if err != nil {
			return "", err
		}
		if p, ok := match(objs); ok {
			return p, nil
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-tick.C:
		}
	}
}

// Endpoints lists the endpoint names the device offers.
func (c *Client) Endpoints() []string {
	var names []string
	for n := range c.chars {
		names = append(names, n)
	}
	return names
}

// Do writes req to endpoint's characteristic and reads the answer back.
// BlueZ splits long values into prepared writes and blob reads.
func (c *Client) Do(ctx context.Context, endpoint string, req []byte) ([]byte, error) {
	cp, ok := c.chars[endpoint]
	if !ok {
		return nil, fmt.Errorf("ble: device has no endpoint %q", endpoint)
	}
	if len(req) > MaxValue {
		return nil, fmt.Errorf("ble: %s: request of %d bytes exceeds %d", endpoint, len(req), MaxValue)
	}
	obj := c.conn.Object(bluezBus, cp)
	if err := obj.CallWithContext(ctx, ifaceChar+".WriteValue", 0, req,
		map[string]dbus.Variant{"type": dbus.MakeVariant("request")}).Err; err != nil {
		return nil, fmt.Errorf("ble: writing %s: %w", endpoint, err)
	}
	var resp []byte
	if err := obj.CallWithContext(ctx, ifaceChar+".ReadValue", 0, map[string]dbus.Variant{}).Store(&resp); err != nil {
		return nil, fmt.Errorf("ble: reading %s: %w", endpoint, err)
	}
	return resp, nil
}

// Close disconnects from the device.
func (c *Client) Close() error {
	if c.device != "" {
		_ = c.conn.Object(bluezBus, c.device).Call(ifaceDevice+".Disconnect", 0).Err
	}
	return c.conn.Close()
}
