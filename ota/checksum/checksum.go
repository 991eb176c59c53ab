// Package checksum computes firmware checksums exactly as ThingsBoard
// writes them into fw_checksum, so that device SDKs written for
// ThingsBoard verify them unchanged. It is a leaf: the API (upload), the
// OTA engine and the twin (verification) all use it.
//
// ThingsBoard's BaseOtaPackageService.generateChecksum hashes with Guava
// and stores HashCode.toString(): the lower-case hex of HashCode.asBytes().
// For the digests (MD5, SHA-*) that is the usual hex. For the integer
// hashes Guava's bytes are little-endian: CRC32 0xCBF43926 is written
// "2639f4cb", MurmurHash3_x86_32 likewise, and MurmurHash3_x64_128 is h1
// then h2, each little-endian. ThingsBoard's Python SDK verifies them by
// reversing the bytes of its big-endian hex, which is the same thing.
package checksum

import (
	"crypto/md5"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash/crc32"
	"strings"

	"github.com/twmb/murmur3"
)

// Algorithm names, as ThingsBoard's ChecksumAlgorithm enum spells them
// (and as fw_checksum_algorithm carries them).
const (
	MD5        = "MD5"
	SHA256     = "SHA256"
	SHA384     = "SHA384"
	SHA512     = "SHA512"
	CRC32      = "CRC32"
	Murmur3_32 = "MURMUR3_32"
	Murmur3128 = "MURMUR3_128"
)

// Default is ThingsBoard's default algorithm.
const Default = SHA256

// Algorithms lists every supported name.
var Algorithms = []string{MD5, SHA256, SHA384, SHA512, CRC32, Murmur3_32, Murmur3128}

// Normalize maps a user's spelling (sha256, SHA-256, murmur3-128…) to the
// canonical name; "" gives Default.
func Normalize(name string) (string, error) {
	if name == "" {
		return Default, nil
	}
	n := strings.ToUpper(strings.NewReplacer("-", "", "_", "").Replace(name))
	for _, a := range Algorithms {
		if strings.ReplaceAll(a, "_", "") == n {
			return a, nil
		}
	}
	return "", fmt.Errorf("checksum: unknown algorithm %q (want one of %s)", name, strings.Join(Algorithms, ", "))
}

// Sum returns data's checksum under alg (a canonical or user spelling).
func Sum(alg string, data []byte) (string, error) {
	a, err := Normalize(alg)
	if err != nil {
		return "", err
	}
	var b []byte
	switch a {
	case MD5:
		s := md5.Sum(data)
		b = s[:]
	case SHA256:
		s := sha256.Sum256(data)
		b = s[:]
	case SHA384:
		s := sha512.Sum384(data)
		b = s[:]
	case SHA512:
		s := sha512.Sum512(data)
		b = s[:]
	case CRC32:
		b = binary.LittleEndian.AppendUint32(nil, crc32.ChecksumIEEE(data))
	case Murmur3_32:
		b = binary.LittleEndian.AppendUint32(nil, murmur3.Sum32(data))
	case Murmur3128:
		h1, h2 := murmur3.Sum128(data)
		b = binary.LittleEndian.AppendUint64(binary.LittleEndian.AppendUint64(nil, h1), h2)
	}
	return hex.EncodeToString(b), nil
}

// Verify tells whether data matches want (compared case-insensitively, as
// hex is).
func Verify(alg string, data []byte, want string) (bool, error) {
	got, err := Sum(alg, data)
	if err != nil {
		return false, err
	}
	return strings.EqualFold(got, strings.TrimSpace(want)), nil
}
