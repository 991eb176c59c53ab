package label

import (
	"bytes"
	"compress/zlib"
	"errors"
	"fmt"
	"strings"
)

// A small PDF 1.4 writer is enough here: pages hold text in the standard
// Helvetica font (no embedding needed) and QR codes as 1-pixel-per-module
// grayscale image XObjects that the viewer scales up without interpolation,
// so the code stays sharp at any zoom or printer resolution.

type pdfDoc struct {
	objs [][]byte // object n is objs[n-1]
}

func (d *pdfDoc) reserve() int {
	d.objs = append(d.objs, nil)
	return len(d.objs)
}

func (d *pdfDoc) set(id int, body string) { d.objs[id-1] = []byte(body) }

func (d *pdfDoc) add(body string) int {
	id := d.reserve()
	d.set(id, body)
	return id
}

func (d *pdfDoc) addStream(dict string, data []byte) int {
	id := d.reserve()
	var b bytes.Buffer
	fmt.Fprintf(&b, "<< %s /Length %d >>\nstream\n", dict, len(data))
	b.Write(data)
	b.WriteString("\nendstream")
	d.objs[id-1] = b.Bytes()
	return id
}

func (d *pdfDoc) bytes(root int) []byte {
	var b bytes.Buffer
	b.WriteString("%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
	offs := make([]int, len(d.objs))
	for i, o := range d.objs {
		offs[i] = b.Len()
		fmt.Fprintf(&b, "%d 0 obj\n", i+1)
		b.Write(o)
		b.WriteString("\nendobj\n")
	}
	xref := b.Len()
	fmt.Fprintf(&b, "xref\n0 %d\n0000000000 65535 f \n", len(d.objs)+1)
	for _, off := range offs {
		fmt.Fprintf(&b, "%010d 00000 n \n", off)
	}
	fmt.Fprintf(&b, "trailer\n<< /Size %d /Root %d 0 R >>\nstartxref\n%d\n%%%%EOF\n", len(d.objs)+1, root, xref)
	return b.Bytes()
}

// qrXObject adds q as an image XObject with its quiet zone.
func (d *pdfDoc) qrXObject(q QR) (int, error) {
	img := q.Image(1)
	var z bytes.Buffer
	zw := zlib.NewWriter(&z)
	if _, err := zw.Write(img.Pix); err != nil {
		return 0, err
	}
	if err := zw.Close(); err != nil {
		return 0, err
	}
	n := img.Bounds().Dx()
	return d.addStream(fmt.Sprintf("/Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace /DeviceGray /BitsPerComponent 8 /Interpolate false /Filter /FlateDecode", n, n), z.Bytes()), nil
}

func pdfString(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `(`, `\(`, `)`, `\)`)
	return "(" + r.Replace(s) + ")"
}

// Label size in points: 2 x 1.25 inches.
const (
	labelW = 144.0
	labelH = 90.0
)

// drawLabel writes the content stream operators of one label whose lower
// left corner is at x, y, with its QR code drawn by XObject name img.
func drawLabel(c *bytes.Buffer, x, y float64, img string, in Info) {
	const qr = 84.0
	fmt.Fprintf(c, "q %.2f 0 0 %.2f %.2f %.2f cm /%s Do Q\n", qr, qr, x+3, y+(labelH-qr)/2, img)
	tx := x + 3 + qr + 1
	text := func(size, ty float64, s string) {
		// Shrink long lines to the room right of the code; Helvetica's
		// widest printable glyphs are under 0.6 em on average.
		room := labelW - (tx - x) - 3
		if w := 0.6 * size * float64(len(s)); w > room {
			size = size * room / w
		}
		fmt.Fprintf(c, "BT /F1 %.2f Tf %.2f %.2f Td %s Tj ET\n", size, tx, y+ty, pdfString(s))
	}
	text(9, 62, in.SN)
	text(6, 46, in.ServiceName)
	if in.PoP != "" {
		text(6, 37, "PoP "+in.PoP)
	}
	text(4.5, 8, "Scan to set up Wi-Fi")
}

// RenderPDF returns a one-page PDF of the label, the page the size of the
// label.
func RenderPDF(in Info) ([]byte, error) {
	return renderPages([]Info{in}, labelW, labelH, 1, 1, 0, 0, false)
}

// RenderSheet returns an A4 PDF with every label, 3 across and 8 down a
// page, with cut lines around each.
func RenderSheet(ins []Info) ([]byte, error) {
	if len(ins) == 0 {
		return nil, errors.New("label: no labels for the sheet")
	}
	return renderPages(ins, 595, 842, 3, 8, 36, 30, true)
}

func renderPages(ins []Info, pageW, pageH float64, cols, rows int, marginX, marginY float64, cut bool) ([]byte, error) {
	for _, in := range ins {
		if err := in.check(); err != nil {
			return nil, err
		}
	}
	d := &pdfDoc{}
	catalog := d.reserve()
	pages := d.reserve()
	font := d.add("<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>")
	per := cols * rows
	gapX, gapY := 0.0, 0.0
	if cols > 1 {
		gapX = (pageW - 2*marginX - float64(cols)*labelW) / float64(cols-1)
	}
	if rows > 1 {
		gapY = (pageH - 2*marginY - float64(rows)*labelH) / float64(rows-1)
	}
	var kids []string
	for start := 0; start < len(ins); start += per {
		var c bytes.Buffer
		var xobjs []string
		for i, in := range ins[start:min(start+per, len(ins))] {
			q, err := EncodeQR(in.Payload)
			if err != nil {
				return nil, err
			}
			id, err := d.qrXObject(q)
			if err != nil {
				return nil, fmt.Errorf("label: compressing qr code: %w", err)
			}
			name := fmt.Sprintf("Q%d", i)
			xobjs = append(xobjs, fmt.Sprintf("/%s %d 0 R", name, id))
			col, row := i%cols, i/cols
			x := marginX + float64(col)*(labelW+gapX)
			y := pageH - marginY - float64(row+1)*labelH - float64(row)*gapY
			if cut {
				fmt.Fprintf(&c, "q 0.5 G 0.3 w %.2f %.2f %.2f %.2f re S Q\n", x, y, labelW, labelH)
			}
			drawLabel(&c, x, y, name, in)
		}
		content := d.addStream("", c.Bytes())
		page := d.add(fmt.Sprintf("<< /Type /Page /Parent %d 0 R /MediaBox [0 0 %.2f %.2f] /Resources << /Font << /F1 %d 0 R >> /XObject << %s >> >> /Contents %d 0 R >>",
			pages, pageW, pageH, font, strings.Join(xobjs, " "), content))
		kids = append(kids, fmt.Sprintf("%d 0 R", page))
	}
	d.set(pages, fmt.Sprintf("<< /Type /Pages /Kids [%s] /Count %d >>", strings.Join(kids, " "), len(kids)))
	d.set(catalog, fmt.Sprintf("<< /Type /Catalog /Pages %d 0 R >>", pages))
	return d.bytes(catalog), nil
}
