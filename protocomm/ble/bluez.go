package ble

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/godbus/dbus/v5"
)

// BlueZ D-Bus names.
const (
	bluezBus        = "org.bluez"
	ifaceAdapter    = "org.bluez.Adapter1"
	ifaceDevice     = "org.bluez.Device1"
	ifaceGattMgr    = "org.bluez.GattManager1"
	ifaceAdvMgr     = "org.bluez.LEAdvertisingManager1"
	ifaceService    = "org.bluez.GattService1"
	ifaceChar       = "org.bluez.GattCharacteristic1"
	ifaceDesc       = "org.bluez.GattDescriptor1"
	ifaceAdv        = "org.bluez.LEAdvertisement1"
	ifaceObjMgr     = "org.freedesktop.DBus.ObjectManager"
	ifaceProperties = "org.freedesktop.DBus.Properties"
)

type managedObjects map[dbus.ObjectPath]map[string]map[string]dbus.Variant

// systemBus connects to the system bus, reporting ErrNoAdapter when there
// is none: without it there is no BlueZ either.
func systemBus() (*dbus.Conn, error) {
	conn, err := dbus.ConnectSystemBus()
	if err != nil {
		return nil, fmt.Errorf("%w (system D-Bus: %v)", ErrNoAdapter, err)
	}
	return conn, nil
}

func getObjects(ctx context.Context, conn *dbus.Conn) (managedObjects, error) {
	var objs managedObjects
	err := conn.Object(bluezBus, "/").CallWithContext(ctx, ifaceObjMgr+".GetManagedObjects", 0).Store(&objs)
	if err != nil {
		return nil, fmt.Errorf("%w (BlueZ: %v)", ErrNoAdapter, err)
	}
	return objs, nil
}

// findAdapter returns the adapter named want ("hci0"), or the first one
// with the interface needed, sorted by path for a stable choice.
func findAdapter(ctx context.Context, conn *dbus.Conn, want, iface string) (dbus.ObjectPath, error) {
	objs, err := getObjects(ctx, conn)
	if err != nil {
		return "", err
	}
	var paths []string
	for p, ifs := range objs {
		if _, ok := ifs[ifaceAdapter]; !ok {
			continue
		}
		if _, ok := ifs[iface]; !ok {
			continue
		}
		if want != "" && !strings.HasSuffix(string(p), "/"+want) {
			continue
		}
		paths = append(paths, string(p))
	}
	if len(paths) == 0 {
		return "", ErrNoAdapter
	}
	sort.Strings(paths)
	return dbus.ObjectPath(paths[0]), nil
}
