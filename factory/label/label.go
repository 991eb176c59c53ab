// Package label renders a unit's label for station 5: the serial number in
// text and the provisioning QR code, as PNG (for screens and office
// printers), PDF (one label per page, or a sheet of many) and ZPL II (for
// Zebra thermal printers, which draw the QR code themselves).
package label

import (
	"bytes"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"strings"

	qrcode "github.com/yeqown/go-qrcode/v2"
	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/math/fixed"
)

// Info is what a label shows.
type Info struct {
	SN          string // printed large
	ServiceName string // the BLE name, printed small
	PoP         string // printed small, for typing it when the QR cannot be scanned
	Payload     string // the QR code's text
}

func (in Info) check() error {
	if in.SN == "" || in.Payload == "" {
		return errors.New("label: serial number and payload are required")
	}
	for _, s := range []string{in.SN, in.ServiceName, in.PoP, in.Payload} {
		for _, c := range s {
			// ZPL takes ^ and ~ as command prefixes inside field data,
			// and the PDF and PNG fonts hold printable ASCII only.
			if c < 0x20 || c > 0x7e || c == '^' || c == '~' {
				return fmt.Errorf("label: %q holds a character a label cannot print", s)
			}
		}
	}
	return nil
}

// QR is a QR code as a square of modules, true for dark, without the quiet
// zone.
type QR [][]bool

// matrixWriter takes the matrix out of the encoder.
type matrixWriter struct{ bits [][]bool }

func (w *matrixWriter) Write(m qrcode.Matrix) error { w.bits = m.Bitmap(); return nil }
func (w *matrixWriter) Close() error                { return nil }

// EncodeQR encodes text in byte mode with error correction level M, the
// level ESP-IDF's qrcode component uses for provisioning payloads.
func EncodeQR(text string) (QR, error) {
	q, err := qrcode.NewWith(text, qrcode.WithEncodingMode(qrcode.EncModeByte), qrcode.WithErrorCorrectionLevel(qrcode.ErrorCorrectionMedium))
	if err != nil {
		return nil, fmt.Errorf("label: encoding qr code: %w", err)
	}
	var w matrixWriter
	if err := q.Save(&w); err != nil {
		return nil, fmt.Errorf("label: encoding qr code: %w", err)
	}
	if len(w.bits) == 0 || len(w.bits) != len(w.bits[0]) {
		return nil, errors.New("label: encoding qr code: empty matrix")
	}
	return QR(w.bits), nil
}

// quiet is the quiet zone the QR specification requires, in modules.
const quiet = 4

// Image draws the QR code with its quiet zone, scale pixels per module.
func (q QR) Image(scale int) *image.Gray {
	n := (len(q) + 2*quiet) * scale
	img := image.NewGray(image.Rect(0, 0, n, n))
	draw.Draw(img, img.Bounds(), image.White, image.Point{}, draw.Src)
	for y, row := range q {
		for x, dark := range row {
			if dark {
				r := image.Rect((x+quiet)*scale, (y+quiet)*scale, (x+quiet+1)*scale, (y+quiet+1)*scale)
				draw.Draw(img, r, image.Black, image.Point{}, draw.Src)
			}
		}
	}
	return img
}

// Label geometry at 300 dpi: 2 x 1.25 inches, a common thermal label.
const (
	DPI    = 300
	Width  = 600
	Height = 375
)

// RenderImage draws the label.
func RenderImage(in Info) (*image.Gray, error) {
	if err := in.check(); err != nil {
		return nil, err
	}
	q, err := EncodeQR(in.Payload)
	if err != nil {
		return nil, err
	}
	img := image.NewGray(image.Rect(0, 0, Width, Height))
	draw.Draw(img, img.Bounds(), image.White, image.Point{}, draw.Src)
	// The largest whole number of pixels per module that fits the label's
	// height keeps modules sharp for scanners.
	scale := max(1, (Height-10)/(len(q)+2*quiet))
	qi := q.Image(scale)
	top := (Height - qi.Bounds().Dy()) / 2
	draw.Draw(img, qi.Bounds().Add(image.Pt(0, top)), qi, image.Point{}, draw.Src)

	x := qi.Bounds().Dx() + 4
	room := Width - x - 8
	drawText(img, x, 60, in.SN, fitScale(in.SN, room, 4))
	lines := []string{in.ServiceName}
	if in.PoP != "" {
		lines = append(lines, "PoP "+in.PoP)
	}
	y := 150
	for _, s := range lines {
		if s == "" {
			continue
		}
		drawText(img, x, y, s, fitScale(s, room, 2))
		y += 50
	}
	drawText(img, x, Height-30, "Scan to set up Wi-Fi", fitScale("Scan to set up Wi-Fi", room, 2))
	return img, nil
}

// RenderPNG draws the label as a PNG.
func RenderPNG(in Info) ([]byte, error) {
	img, err := RenderImage(in)
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	if err := png.Encode(&b, img); err != nil {
		return nil, fmt.Errorf("label: encoding png: %w", err)
	}
	return b.Bytes(), nil
}

var face = basicfont.Face7x13

// fitScale is the largest magnification up to want at which s fits in
// width pixels.
func fitScale(s string, width, want int) int {
	w := font.MeasureString(face, s).Ceil()
	for sc := want; sc > 1; sc-- {
		if w*sc <= width {
			return sc
		}
	}
	return 1
}

// drawText draws s with its baseline at y, magnified scale times: the
// bitmap font is 13 pixels high, too small for a 300 dpi label by itself.
func drawText(dst *image.Gray, x, y int, s string, scale int) {
	m := face.Metrics()
	w := font.MeasureString(face, s).Ceil()
	h := (m.Ascent + m.Descent).Ceil()
	small := image.NewGray(image.Rect(0, 0, w, h))
	draw.Draw(small, small.Bounds(), image.White, image.Point{}, draw.Src)
	d := font.Drawer{Dst: small, Src: image.Black, Face: face, Dot: fixed.P(0, m.Ascent.Ceil())}
	d.DrawString(s)
	top := y - m.Ascent.Ceil()*scale
	for sy := 0; sy < h; sy++ {
		for sx := 0; sx < w; sx++ {
			if small.GrayAt(sx, sy).Y < 128 {
				r := image.Rect(x+sx*scale, top+sy*scale, x+(sx+1)*scale, top+(sy+1)*scale)
				draw.Draw(dst, r.Intersect(dst.Bounds()), image.NewUniform(color.Black), image.Point{}, draw.Src)
			}
		}
	}
}

// ZPL returns the label in Zebra ZPL II for a 203 or 300 dpi printer: the
// printer draws the QR code (model 2, error correction M) and the text
// itself, so the label is sharp at any resolution.
func ZPL(in Info) ([]byte, error) {
	if err := in.check(); err != nil {
		return nil, err
	}
	var b strings.Builder
	b.WriteString("^XA\n")
	b.WriteString("^CI28\n") // UTF-8 field data
	fmt.Fprintf(&b, "^PW%d\n^LL%d\n", Width, Height)
	// ^BQN,2,<magnification>: normal orientation, model 2. "MA," selects
	// error correction M and automatic data mode.
	fmt.Fprintf(&b, "^FO10,10^BQN,2,5^FDMA,%s^FS\n", in.Payload)
	fmt.Fprintf(&b, "^FO330,30^A0N,48,40^FD%s^FS\n", in.SN)
	y := 110
	for _, s := range []string{in.ServiceName, popLine(in.PoP)} {
		if s == "" {
			continue
		}
		fmt.Fprintf(&b, "^FO330,%d^A0N,30,26^FD%s^FS\n", y, s)
		y += 45
	}
	fmt.Fprintf(&b, "^FO330,%d^A0N,24,20^FDScan to set up Wi-Fi^FS\n", Height-50)
	b.WriteString("^XZ\n")
	return []byte(b.String()), nil
}

func popLine(pop string) string {
	if pop == "" {
		return ""
	}
	return "PoP " + pop
}
