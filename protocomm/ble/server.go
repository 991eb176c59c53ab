package ble

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"

	"github.com/godbus/dbus/v5"

	"github.com/thingline/thingline/protocomm"
)

// ServerConfig describes the peripheral.
type ServerConfig struct {
	// Name is advertised as the local name (PROV_xxxxxx), at most 29 bytes.
	Name string
	// ServiceUUID defaults to DefaultServiceUUID.
	ServiceUUID string
	// Endpoints maps each endpoint name to its 16-bit id
	// (wifiprov.Device.Endpoints gives them).
	Endpoints map[string]uint16
	// Adapter selects the controller ("hci0"); empty means the first.
	Adapter string
	Log     *slog.Logger
}

const appPath = dbus.ObjectPath("/org/thingline/prov")

// server is the running GATT peripheral behind Serve.
type server struct {
	conn    *dbus.Conn
	adapter dbus.ObjectPath
	pc      *protocomm.Protocomm
	log     *slog.Logger
	objects managedObjects

	mu       sync.Mutex // guards the fields below
	values   map[string]*endpointValue
	sessions map[string]uint32 // BlueZ device path -> transport session
	next     uint32
}

// Serve registers the GATT application and advertisement with BlueZ and
// serves pc until ctx is done.
func Serve(ctx context.Context, pc *protocomm.Protocomm, cfg ServerConfig) error {
	if cfg.ServiceUUID == "" {
		cfg.ServiceUUID = DefaultServiceUUID
	}
	if len(cfg.Name) == 0 || len(cfg.Name) > 29 {
		return fmt.Errorf("ble: device name %q must be 1 to 29 bytes", cfg.Name)
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	conn, err := systemBus()
	if err != nil {
		return err
	}
	defer conn.Close()
	adapter, err := findAdapter(ctx, conn, cfg.Adapter, ifaceGattMgr)
	if err != nil {
		return err
	}
	s := &server{conn: conn, adapter: adapter, pc: pc, log: cfg.Log,
		values: map[string]*endpointValue{}, sessions: map[string]uint32{}, objects: managedObjects{}}
	if err := s.export(cfg); err != nil {
		return err
	}
	gatt := conn.Object(bluezBus, adapter)
	if err := gatt.CallWithContext(ctx, ifaceGattMgr+".RegisterApplication", 0, appPath, map[string]dbus.Variant{}).Err; err != nil {
		return fmt.Errorf("ble: registering GATT application on %s: %w", adapter, err)
	}
	defer gatt.Call(ifaceGattMgr+".UnregisterApplication", 0, appPath)
	advPath := appPath + "/advertisement0"
	if err := gatt.CallWithContext(ctx, ifaceAdvMgr+".RegisterAdvertisement", 0, advPath, map[string]dbus.Variant{}).Err; err != nil {
		return fmt.Errorf("ble: registering advertisement on %s: %w", adapter, err)
	}
	defer gatt.Call(ifaceAdvMgr+".UnregisterAdvertisement", 0, advPath)
	cfg.Log.Info("ble: advertising", "name", cfg.Name, "service", cfg.ServiceUUID, "adapter", adapter)
	<-ctx.Done()
	return nil
}

// export publishes the service, one characteristic and descriptor per
// endpoint, the advertisement and the object manager BlueZ reads them from.
func (s *server) export(cfg ServerConfig) error {
	svcPath := appPath + "/service0"
	s.objects[svcPath] = map[string]map[string]dbus.Variant{ifaceService: {
		"UUID": dbus.MakeVariant(strings.ToLower(cfg.ServiceUUID)), "Primary": dbus.MakeVariant(true),
	}}
	names := make([]string, 0, len(cfg.Endpoints))
	for n := range cfg.Endpoints {
		names = append(names, n)
	}
	sort.Slice(names, func(i, j int) bool { return cfg.Endpoints[names[i]] < cfg.Endpoints[names[j]] })
	for i, name := range names {
		uuid, err := CharUUID(cfg.ServiceUUID, cfg.Endpoints[name])
		if err != nil {
			return err
		}
		cp := dbus.ObjectPath(fmt.Sprintf("%s/char%d", svcPath, i))
		dp := cp + "/desc0"
		s.values[name] = &endpointValue{}
		s.objects[cp] = map[string]map[string]dbus.Variant{ifaceChar: {
			"UUID": dbus.MakeVariant(uuid), "Service": dbus.MakeVariant(svcPath),
			"Flags": dbus.MakeVariant([]string{"read", "write"}),
		}}
		s.objects[dp] = map[string]map[string]dbus.Variant{ifaceDesc: {
			"UUID": dbus.MakeVariant(UserDescriptionUUID), "Characteristic": dbus.MakeVariant(cp),
			"Flags": dbus.MakeVariant([]string{"read"}),
		}}
		if err := s.conn.Export(&gattChar{s: s, name: name}, cp, ifaceChar); err != nil {
			return fmt.Errorf("ble: exporting %s: %w", name, err)
		}
		if err := s.conn.Export(&gattDesc{value: []byte(name)}, dp, ifaceDesc); err != nil {
			return fmt.Errorf("ble: exporting %s descriptor: %w", name, err)
		}
		s.exportProps(cp, s.objects[cp])
		s.exportProps(dp, s.objects[dp])
	}
	s.exportProps(svcPath, s.objects[svcPath])
	advPath := appPath + "/advertisement0"
	advProps := map[string]map[string]dbus.Variant{ifaceAdv: {
		"Type":         dbus.MakeVariant("peripheral"),
		"ServiceUUIDs": dbus.MakeVariant([]string{strings.ToLower(cfg.ServiceUUID)}),
		"LocalName":    dbus.MakeVariant(cfg.Name),
		"Discoverable": dbus.MakeVariant(true),
	}}
	if err := s.conn.Export(advert{}, advPath, ifaceAdv); err != nil {
		return fmt.Errorf("ble: exporting advertisement: %w", err)
	}
	s.exportProps(advPath, advProps)
	if err := s.conn.Export(objectManager{s.objects}, appPath, ifaceObjMgr); err != nil {
		return fmt.Errorf("ble: exporting object manager: %w", err)
	}
	return nil
}

func (s *server) exportProps(path dbus.ObjectPath, props map[string]map[string]dbus.Variant) {
	_ = s.conn.Export(propsObject(props), path, ifaceProperties)
}

// session maps the BlueZ device a request came from to a transport
// session: a new central opens a new session (closing the previous one),
// as a new connection handle does on ESP-IDF.
func (s *server) session(opts map[string]dbus.Variant) uint32 {
	dev := ""
	if v, ok := opts["device"]; ok {
		if p, ok := v.Value().(dbus.ObjectPath); ok {
			dev = string(p)
		}
	}
	if id, ok := s.sessions[dev]; ok {
		return id
	}
	for d, id := range s.sessions {
		s.pc.CloseSession(id)
		delete(s.sessions, d)
	}
	s.next++
	s.sessions[dev] = s.next
	s.pc.NewSession(s.next)
	return s.next
}

func offsetOf(opts map[string]dbus.Variant) int {
	if v, ok := opts["offset"]; ok {
		if o, ok := v.Value().(uint16); ok {
			return int(o)
		}
	}
	return 0
}

var errFailed = dbus.NewError("org.bluez.Error.Failed", []any{"request failed"})

type gattChar struct {
	s    *server
	name string
}

func (c *gattChar) ReadValue(opts map[string]dbus.Variant) ([]byte, *dbus.Error) {
	c.s.mu.Lock()
	defer c.s.mu.Unlock()
	sid := c.s.session(opts)
	out, err := c.s.values[c.name].read(offsetOf(opts), func(req []byte) ([]byte, error) {
		return c.s.pc.Handle(sid, c.name, req)
	})
	if err != nil {
		c.s.log.Warn("ble: request failed", "endpoint", c.name, "err", err)
		return nil, errFailed
	}
	return out, nil
}

func (c *gattChar) WriteValue(value []byte, opts map[string]dbus.Variant) *dbus.Error {
	c.s.mu.Lock()
	defer c.s.mu.Unlock()
	c.s.session(opts)
	if err := c.s.values[c.name].write(offsetOf(opts), value); err != nil {
		c.s.log.Warn("ble: write refused", "endpoint", c.name, "err", err)
		return dbus.NewError("org.bluez.Error.InvalidOffset", []any{err.Error()})
	}
	return nil
}

type gattDesc struct{ value []byte }

func (d *gattDesc) ReadValue(opts map[string]dbus.Variant) ([]byte, *dbus.Error) {
	o := offsetOf(opts)
	if o > len(d.value) {
		return nil, dbus.NewError("org.bluez.Error.InvalidOffset", nil)
	}
	return d.value[o:], nil
}

type advert struct{}

func (advert) Release() *dbus.Error { return nil }

type objectManager struct{ objs managedObjects }

func (m objectManager) GetManagedObjects() (managedObjects, *dbus.Error) { return m.objs, nil }

// propsObject answers org.freedesktop.DBus.Properties for read-only values.
type propsObject map[string]map[string]dbus.Variant

func (p propsObject) Get(iface, name string) (dbus.Variant, *dbus.Error) {
	if v, ok := p[iface][name]; ok {
		return v, nil
	}
	return dbus.Variant{}, dbus.NewError("org.freedesktop.DBus.Error.InvalidArgs", []any{"no such property " + name})
}

func (p propsObject) GetAll(iface string) (map[string]dbus.Variant, *dbus.Error) {
	return p[iface], nil
}

func (p propsObject) Set(iface, name string, v dbus.Variant) *dbus.Error {
	return dbus.NewError("org.freedesktop.DBus.Error.PropertyReadOnly", []any{name})
}
