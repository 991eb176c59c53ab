package checksum

import "testing"

// Vectors: the digests are the standard ones (python3 hashlib); the
// integer hashes are the published values of CRC-32/IEEE (zlib.crc32:
// "123456789" → 0xCBF43926) and MurmurHash3 with seed 0 (x86_32 "hello" →
// 0x248bfa47; x64_128 "hello" → h1 0xcbd8a7b341bd9b02, h2
// 0x5b1e906a48ae1d19), written in Guava's little-endian byte order as
// ThingsBoard stores them.
func TestVectors(t *testing.T) {
	fox := "The quick brown fox jumps over the lazy dog"
	for _, c := range []struct{ alg, in, want string }{
		{SHA256, "", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
		{SHA256, "hello", "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"},
		{MD5, fox, "9e107d9d372bb6826bd81d3542a419d6"},
		{SHA384, "hello", "59e1748777448c69de6b800d7a33bbfb9ff1b463e44354c3553bcdb9c666fa90125a3c79f90397bdf5f6a13de828684f"},
		{SHA512, "", "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e"},
		{CRC32, "123456789", "2639f4cb"},
		{CRC32, "hello", "86a61036"},
		{CRC32, fox, "39a34f41"},
		{CRC32, "", "00000000"},
		{Murmur3_32, "hello", "47fa8b24"},
		{Murmur3_32, fox, "23f74f2e"},
		{Murmur3128, "hello", "029bbd41b3a7d8cb191dae486a901e5b"},
		{Murmur3128, fox, "6c1b07bc7bbc4be347939ac4a93c437a"},
		{Murmur3128, "", "00000000000000000000000000000000"},
	} {
		got, err := Sum(c.alg, []byte(c.in))
		if err != nil || got != c.want {
			t.Errorf("%s(%q) = %s, %v; want %s", c.alg, c.in, got, err, c.want)
		}
		if ok, _ := Verify(c.alg, []byte(c.in), c.want); !ok {
			t.Errorf("Verify %s(%q) refused its own checksum", c.alg, c.in)
		}
	}
}

// TestPythonSDKOrder applies the rule ThingsBoard's Python SDK uses to
// verify CRC32 and murmur3: format the integer as big-endian hex, then
// reverse it byte by byte.
func TestPythonSDKOrder(t *testing.T) {
	reverse := func(hexBE string) string {
		out := ""
		for i := len(hexBE); i > 0; i -= 2 {
			out += hexBE[i-2 : i]
		}
		return out
	}
	if got, _ := Sum(CRC32, []byte("123456789")); got != reverse("cbf43926") {
		t.Errorf("crc32 %s", got)
	}
	if got, _ := Sum(Murmur3_32, []byte("hello")); got != reverse("248bfa47") {
		t.Errorf("murmur3_32 %s", got)
	}
	// mmh3.hash128 returns h2<<64|h1 as one integer.
	if got, _ := Sum(Murmur3128, []byte("hello")); got != reverse("5b1e906a48ae1d19cbd8a7b341bd9b02") {
		t.Errorf("murmur3_128 %s", got)
	}
}

func TestNormalize(t *testing.T) {
	for in, want := range map[string]string{"": SHA256, "sha256": SHA256, "SHA-256": SHA256, "crc32": CRC32,
		"murmur3_128": Murmur3128, "MURMUR3-32": Murmur3_32, "md5": MD5} {
		if got, err := Normalize(in); err != nil || got != want {
			t.Errorf("Normalize(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := Normalize("sha1"); err == nil {
		t.Error("sha1 accepted")
	}
	if _, err := Sum("whirlpool", nil); err == nil {
		t.Error("unknown algorithm summed")
	}
}
