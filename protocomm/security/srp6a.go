package security

import (
	"crypto/rand"
	"crypto/sha512"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"math/big"
)

// SRP-6a as ESP-IDF's esp_srp.c and esp_prov's srp6a.py compute it: the RFC
// 5054 3072-bit group with g = 5 and SHA-512 everywhere. The byte strings
// hashed are a mix of padded and minimal encodings; each helper below says
// which, because getting one wrong breaks interoperability only sometimes.

const srpNLen = 384

var (
	srpN = mustHex("" +
		"FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74" +
		"020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437" +
		"4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED" +
		"EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF05" +
		"98DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB" +
		"9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B" +
		"E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF695581718" +
		"3995497CEA956AE515D2261898FA051015728E5A8AAAC42DAD33170D04507A33" +
		"A85521ABDF1CBA64ECFB850458DBEF0A8AEA71575D060C7DB3970F85A6E1E4C7" +
		"ABF5AE8CDB0933D71E8C94E04A25619DCEE3D2261AD2EE6BF12FFA06D98A0864" +
		"D87602733EC86A64521F2B18177B200CBBE117577A615D6C770988C0BAD946E2" +
		"08E24FA074E5AB3143DB5BFCE0FD108E4B82D120A93AD2CAFFFFFFFFFFFFFFFF")
	srpG = big.NewInt(5)
	// srpK is k = H(N | PAD(g)).
	srpK = new(big.Int).SetBytes(srpHash(srpN.Bytes(), srpPad(srpG)))
)

func mustHex(s string) *big.Int {
	n, ok := new(big.Int).SetString(s, 16)
	if !ok {
		panic("security: bad SRP group constant")
	}
	return n
}

func srpHash(parts ...[]byte) []byte {
	h := sha512.New()
	for _, p := range parts {
		h.Write(p)
	}
	return h.Sum(nil)
}

// srpPad is the fixed-width encoding (len(N) bytes) used in k and u.
func srpPad(n *big.Int) []byte { return n.FillBytes(make([]byte, srpNLen)) }

// srpX is x = H(s | H(I | ":" | p)) with the salt as sent.
func srpX(salt []byte, user, pass string) *big.Int {
	inner := srpHash([]byte(user), []byte(":"), []byte(pass))
	return new(big.Int).SetBytes(srpHash(salt, inner))
}

// srpU is u = H(PAD(A) | PAD(B)).
func srpU(a, b *big.Int) *big.Int {
	return new(big.Int).SetBytes(srpHash(srpPad(a), srpPad(b)))
}

// srpM1 is H(H(N) xor H(PAD(g)) | H(I) | s | A | B | K), with s, A and B as
// they went over the wire.
func srpM1(user string, salt, aBytes, bBytes, key []byte) []byte {
	hn := srpHash(srpN.Bytes())
	hg := srpHash(srpPad(srpG))
	subtle.XORBytes(hn, hn, hg)
	return srpHash(hn, srpHash([]byte(user)), salt, aBytes, bBytes, key)
}

// srpM2 is H(A | M1 | K).
func srpM2(aBytes, m1, key []byte) []byte { return srpHash(aBytes, m1, key) }

// GenSaltVerifier makes the salt and verifier a device stores for user and
// password, as esp_prov --sec2_gen_cred and esp_srp_gen_salt_verifier do.
// The salt's first byte is never zero: esp_prov hashes the salt as a
// number, dropping leading zero bytes, and would then disagree with a
// device that hashes the bytes as stored.
func GenSaltVerifier(user, pass string, saltLen int) (salt, verifier []byte, err error) {
	return genSaltVerifier(rand.Reader, user, pass, saltLen)
}

func genSaltVerifier(r io.Reader, user, pass string, saltLen int) (salt, verifier []byte, err error) {
	if saltLen < 1 || saltLen > 64 {
		return nil, nil, fmt.Errorf("security2: salt length %d out of range 1..64", saltLen)
	}
	for {
		if salt, err = readRand(r, saltLen); err != nil {
			return nil, nil, fmt.Errorf("security2: generating salt: %w", err)
		}
		if salt[0] != 0 {
			break
		}
	}
	v := new(big.Int).Exp(srpG, srpX(salt, user, pass), srpN)
	return salt, v.Bytes(), nil
}

// srpRandom returns a 256-bit secret exponent with its top bit set, as
// esp_prov draws it.
func srpRandom(r io.Reader) (*big.Int, error) {
	b, err := readRand(r, 32)
	if err != nil {
		return nil, err
	}
	b[0] |= 0x80
	return new(big.Int).SetBytes(b), nil
}

var errSRPParam = errors.New("public value is zero modulo N")
