package label

import (
	"bytes"
	"image"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/makiuchi-d/gozxing"
	gzqr "github.com/makiuchi-d/gozxing/qrcode"
)

var sample = Info{
	SN:          "SN-000001",
	ServiceName: "PROV_11770F",
	PoP:         "abcd2345ef",
	Payload:     `{"ver":"v1","name":"PROV_11770F","username":"wifiprov","pop":"abcd2345ef","transport":"ble"}`,
}

// decodeQR reads the QR code in img with an independent decoder.
func decodeQR(t *testing.T, img image.Image) string {
	t.Helper()
	bmp, err := gozxing.NewBinaryBitmapFromImage(img)
	if err != nil {
		t.Fatal(err)
	}
	res, err := gzqr.NewQRCodeReader().Decode(bmp, map[gozxing.DecodeHintType]interface{}{gozxing.DecodeHintType_TRY_HARDER: true})
	if err != nil {
		t.Fatalf("decoding qr code: %v", err)
	}
	return res.GetText()
}

func TestPNGQRRoundTrip(t *testing.T) {
	b, err := RenderPNG(sample)
	if err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	if img.Bounds().Dx() != Width || img.Bounds().Dy() != Height {
		t.Errorf("label is %v, want %dx%d", img.Bounds(), Width, Height)
	}
	if got := decodeQR(t, img); got != sample.Payload {
		t.Errorf("qr code holds %q, want %q", got, sample.Payload)
	}
	// Some text was drawn right of the code.
	g := img.(*image.Gray)
	dark := 0
	for y := 0; y < Height; y++ {
		for x := Width - 200; x < Width; x++ {
			if g.GrayAt(x, y).Y < 128 {
				dark++
			}
		}
	}
	if dark < 200 {
		t.Errorf("only %d dark pixels where the text goes", dark)
	}
}

func TestZPL(t *testing.T) {
	z, err := ZPL(sample)
	if err != nil {
		t.Fatal(err)
	}
	s := string(z)
	if !strings.HasPrefix(s, "^XA") || !strings.HasSuffix(strings.TrimSpace(s), "^XZ") {
		t.Errorf("not one ^XA..^XZ label:\n%s", s)
	}
	for _, want := range []string{"^BQN,2,", "^FDMA," + sample.Payload + "^FS", "^FD" + sample.SN + "^FS", "^FDPoP " + sample.PoP + "^FS"} {
		if !strings.Contains(s, want) {
			t.Errorf("zpl lacks %q:\n%s", want, s)
		}
	}
	bad := sample
	bad.SN = "SN^XZ"
	if _, err := ZPL(bad); err == nil {
		t.Error("zpl command inside field data accepted")
	}
}

// checkPDF runs qpdf --check and renders the pages with pdftoppm, returning
// the pages as images.
func checkPDF(t *testing.T, pdf []byte, wantPages int, dpi string) []image.Image {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "l.pdf")
	if err := os.WriteFile(path, pdf, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := exec.LookPath("qpdf"); err == nil {
		out, err := exec.Command("qpdf", "--check", path).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "No syntax or stream encoding errors") {
			t.Fatalf("qpdf --check: %v\n%s", err, out)
		}
	} else {
		t.Log("qpdf: not installed; skipping its check")
	}
	if os.Getenv("THINGLINE_LABEL_DUMP") != "" {
		os.WriteFile(os.Getenv("THINGLINE_LABEL_DUMP"), pdf, 0o644)
	}
	if _, err := exec.LookPath("pdftoppm"); err != nil {
		t.Skip("pdftoppm: not installed")
	}
	if out, err := exec.Command("pdftoppm", "-r", dpi, "-gray", "-png", path, filepath.Join(dir, "p")).CombinedOutput(); err != nil {
		t.Fatalf("pdftoppm: %v\n%s", err, out)
	}
	pages, _ := filepath.Glob(filepath.Join(dir, "p*.png"))
	if len(pages) != wantPages {
		t.Fatalf("pdftoppm rendered %d pages, want %d", len(pages), wantPages)
	}
	var imgs []image.Image
	for _, p := range pages {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		img, err := png.Decode(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		imgs = append(imgs, img)
	}
	return imgs
}

func TestPDF(t *testing.T) {
	pdf, err := RenderPDF(sample)
	if err != nil {
		t.Fatal(err)
	}
	imgs := checkPDF(t, pdf, 1, "300")
	if got := decodeQR(t, imgs[0]); got != sample.Payload {
		t.Errorf("pdf qr code holds %q", got)
	}
	if out, err := exec.Command("pdftotext", writeTemp(t, pdf), "-").Output(); err == nil && !strings.Contains(string(out), sample.SN) {
		t.Errorf("pdf text %q lacks the SN", out)
	}
}

func writeTemp(t *testing.T, b []byte) string {
	p := filepath.Join(t.TempDir(), "x.pdf")
	os.WriteFile(p, b, 0o644)
	return p
}

func TestSheet(t *testing.T) {
	var ins []Info
	for i := range 30 {
		in := sample
		in.SN = "SN-0000" + string(rune('A'+i%26)) + string(rune('0'+i/26))
		in.Payload = strings.Replace(sample.Payload, "abcd2345ef", in.SN, 1)
		ins = append(ins, in)
	}
	pdf, err := RenderSheet(ins)
	if err != nil {
		t.Fatal(err)
	}
	imgs := checkPDF(t, pdf, 2, "150") // 24 labels per page
	// The first label of the second page decodes to the 25th payload.
	b := imgs[1].Bounds()
	crop := imgs[1].(interface {
		SubImage(image.Rectangle) image.Image
	}).SubImage(image.Rect(b.Min.X, b.Min.Y, b.Min.X+b.Dx()/3+25, b.Min.Y+b.Dy()/8+50))
	if got := decodeQR(t, crop); got != ins[24].Payload {
		t.Errorf("second page's first code holds %q, want %q", got, ins[24].Payload)
	}
	if _, err := RenderSheet(nil); err == nil {
		t.Error("empty sheet accepted")
	}
}

func FuzzLabel(f *testing.F) {
	f.Add("SN-000001", "PROV_11770F", "abcd2345ef", sample.Payload)
	f.Add("", "", "", "")
	f.Add("x^y", "~", "(", `\)`)
	f.Fuzz(func(t *testing.T, sn, name, pop, payload string) {
		in := Info{SN: sn, ServiceName: name, PoP: pop, Payload: payload}
		if len(payload) > 1000 {
			return
		}
		z, err := ZPL(in)
		if err != nil {
			return
		}
		if strings.Count(string(z), "^XA") != 1 || strings.Count(string(z), "^XZ") != 1 {
			t.Fatalf("field data broke out of the label: %q", z)
		}
		if _, err := RenderPDF(in); err != nil {
			t.Fatal(err)
		}
		if _, err := RenderPNG(in); err != nil {
			t.Fatal(err)
		}
	})
}
