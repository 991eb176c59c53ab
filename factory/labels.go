package factory

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/thingline/thingline/factory/label"
	"github.com/thingline/thingline/pki"
)

// Label file names in a unit directory.
const (
	LabelPNG = "label.png"
	LabelPDF = "label.pdf"
	LabelZPL = "label.zpl"
)

// unitSN is the SN of a unit directory: the manifest's, else the
// directory's name.
func unitSN(dir string) string {
	if m, err := ReadManifest(dir); err == nil && m.SN != "" {
		return m.SN
	}
	return filepath.Base(filepath.Clean(dir))
}

// LabelInfo is what the label of the unit in dir shows.
func LabelInfo(dir string) (label.Info, error) {
	p, err := ReadProvInfo(dir)
	if err != nil {
		return label.Info{}, err
	}
	sn := unitSN(dir)
	return label.Info{SN: sn, ServiceName: p.ServiceName, PoP: p.PoP, Payload: p.QRPayload()}, nil
}

// LabelUnit is station 5 for one unit: it writes label.png, label.pdf and
// label.zpl into the unit directory and, when l is not nil, records the
// station. The unit must be injected in l.
func LabelUnit(ctx context.Context, l *Ledger, dir, operator string) (sn string, err error) {
	info, err := LabelInfo(dir)
	if err != nil {
		return "", err
	}
	if l != nil {
		u, err := l.Unit(ctx, info.SN)
		if err != nil {
			return info.SN, err
		}
		if u.State != StateInjected {
			return info.SN, fmt.Errorf("factory: label %s: unit is %s, not injected", info.SN, u.State)
		}
	}
	pngB, err := label.RenderPNG(info)
	if err != nil {
		return info.SN, err
	}
	pdfB, err := label.RenderPDF(info)
	if err != nil {
		return info.SN, err
	}
	zplB, err := label.ZPL(info)
	if err != nil {
		return info.SN, err
	}
	for _, f := range []struct {
		name string
		b    []byte
	}{{LabelPNG, pngB}, {LabelPDF, pdfB}, {LabelZPL, zplB}} {
		// The provisioning QR code carries the PoP: owner-only until printed.
		if err := pki.WriteFileAtomic(filepath.Join(dir, f.name), f.b, 0o600); err != nil {
			return info.SN, fmt.Errorf("factory: label %s: %w", info.SN, err)
		}
	}
	if l != nil {
		return info.SN, l.RecordStation(ctx, info.SN, StationLabel, Pass, operator, "label.png, label.pdf, label.zpl written")
	}
	return info.SN, nil
}

// LabelSheet writes one A4 PDF with the label of every injected unit of
// the ledger (of one batch when batch is not empty), in SN order, and
// records station 5 for each. It returns the SNs on the sheet.
func LabelSheet(ctx context.Context, l *Ledger, path, batch, operator string) ([]string, error) {
	us, err := l.Units(ctx, StateInjected)
	if err != nil {
		return nil, err
	}
	var infos []label.Info
	var sns []string
	for _, u := range us {
		if batch != "" && u.Batch != batch {
			continue
		}
		info, err := LabelInfo(l.UnitDir(u))
		if err != nil {
			return nil, fmt.Errorf("factory: label sheet: %s: %w", u.SN, err)
		}
		infos = append(infos, info)
		sns = append(sns, u.SN)
	}
	if len(infos) == 0 {
		return nil, fmt.Errorf("factory: label sheet: no injected units")
	}
	pdf, err := label.RenderSheet(infos)
	if err != nil {
		return nil, err
	}
	if err := pki.WriteFileAtomic(path, pdf, 0o600); err != nil { // PoPs in the QR codes
		return nil, fmt.Errorf("factory: label sheet: %w", err)
	}
	for _, sn := range sns {
		if err := l.RecordStation(ctx, sn, StationLabel, Pass, operator, "on sheet "+filepath.Base(path)); err != nil {
			return sns, err
		}
	}
	return sns, nil
}

// UnitDir is where the unit's files are: the directory inject recorded, or,
// when OUT was moved since, the SN's directory beside the ledger.
func (l *Ledger) UnitDir(u Unit) string {
	if _, err := os.Stat(u.Dir); err == nil {
		return u.Dir
	}
	if alt := filepath.Join(filepath.Dir(l.path), u.SN); alt != u.Dir {
		if _, err := os.Stat(alt); err == nil {
			return alt
		}
	}
	return u.Dir
}
