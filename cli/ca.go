package cli

import (
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/thingline/thingline/pki"
)

func init() {
	register(func() *cobra.Command {
		c := &cobra.Command{
			Use:   "ca",
			Short: "Certificate authority: root, device CA, device certificates, revocation and CRLs",
			// Runnable with NoArgs so that a mistyped subcommand is an
			// error, not a silent help page that exits 0 in scripts.
			Args: cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
		}
		c.AddCommand(caInitCmd(), caInitRootCmd(), caSignIntermediateCmd(), caIssueCmd(),
			caIssueServerCmd(), caRevokeCmd(), caCRLCmd(), caShowCmd())
		return c
	})
}

func days(n int) time.Duration { return time.Duration(n) * 24 * time.Hour }

func caInitCmd() *cobra.Command {
	var dir, keyType, csrOut string
	c := &cobra.Command{
		Use:   "init",
		Short: "Create a root and device CA in --dir, or with --csr-out only the device CA key and its CSR",
		Long: `Without --csr-out, init creates root-ca.{crt,key} and device-ca.{crt,key} in --dir.

With --csr-out, init creates only device-ca.key in --dir and writes a CSR for it;
sign that CSR on the offline root machine with 'thingline ca sign-intermediate'
and bring device-ca.crt and root-ca.crt back into --dir.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			kt, err := pki.ParseKeyType(keyType)
			if err != nil {
				return err
			}
			if csrOut == "" {
				if err := pki.InitCA(dir, kt); err != nil {
					return err
				}
				ca, err := pki.LoadCA(dir)
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "created CA in %s\nroot       %s sha256 %s\ndevice CA  %s sha256 %s\n", dir,
					pki.SerialHex(ca.Root), pki.Fingerprint(ca.Root.Raw), pki.SerialHex(ca.Cert), pki.Fingerprint(ca.Cert.Raw))
				return nil
			}
			csr, err := pki.InitIntermediateKey(dir, kt)
			if err != nil {
				return err
			}
			if err := pki.WriteFileAtomic(csrOut, csr, 0o644); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "created %s and %s; sign it with: thingline ca sign-intermediate --root-dir ROOT --csr %s --out %s\n",
				filepath.Join(dir, pki.DeviceKeyFile), csrOut, csrOut, filepath.Join(dir, pki.DeviceCertFile))
			return nil
		},
	}
	c.Flags().StringVar(&dir, "dir", "", "CA directory (required)")
	c.Flags().StringVar(&keyType, "key-type", "ec", "key type: ec (P-256) or rsa (RSA-2048)")
	c.Flags().StringVar(&csrOut, "csr-out", "", "make only the device CA key and write its CSR here")
	_ = c.MarkFlagRequired("dir")
	return c
}

func caInitRootCmd() *cobra.Command {
	var dir, keyType string
	c := &cobra.Command{
		Use:   "init-root",
		Short: "Create only the root (root-ca.crt, root-ca.key) in --dir, on the offline machine",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			kt, err := pki.ParseKeyType(keyType)
			if err != nil {
				return err
			}
			if err := pki.InitRoot(dir, kt); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "created root in %s\n", dir)
			return nil
		},
	}
	c.Flags().StringVar(&dir, "dir", "", "root directory (required)")
	c.Flags().StringVar(&keyType, "key-type", "ec", "key type: ec (P-256) or rsa (RSA-2048)")
	_ = c.MarkFlagRequired("dir")
	return c
}

func caSignIntermediateCmd() *cobra.Command {
	var rootDir, csrPath, out string
	var nDays int
	c := &cobra.Command{
		Use:   "sign-intermediate",
		Short: "Sign a device CA CSR with the root in --root-dir (root-ca.crt is written beside --out)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			csr, err := os.ReadFile(csrPath)
			if err != nil {
				return fmt.Errorf("reading csr: %w", err)
			}
			if err := pki.SignIntermediateFile(rootDir, csr, out, days(nDays)); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s\n", out)
			return nil
		},
	}
	c.Flags().StringVar(&rootDir, "root-dir", "", "directory with root-ca.crt and root-ca.key (required)")
	c.Flags().StringVar(&csrPath, "csr", "", "device CA CSR (required)")
	c.Flags().StringVar(&out, "out", "", "device CA certificate to write, normally CADIR/device-ca.crt (required)")
	c.Flags().IntVar(&nDays, "days", 3650, "validity in days (capped at the root's)")
	for _, f := range []string{"root-dir", "csr", "out"} {
		_ = c.MarkFlagRequired(f)
	}
	return c
}

func caIssueCmd() *cobra.Command {
	var caDir, cn, csrPath, keyOut, out, keyType string
	var nDays int
	var chain bool
	c := &cobra.Command{
		Use:   "issue",
		Short: "Issue one device certificate, from a CSR (--csr) or for a new key (--key-out)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if (csrPath == "") == (keyOut == "") {
				return errors.New("give exactly one of --csr and --key-out")
			}
			ca, err := pki.LoadCA(caDir)
			if err != nil {
				return err
			}
			var crt *x509.Certificate
			if csrPath != "" {
				b, err := os.ReadFile(csrPath)
				if err != nil {
					return fmt.Errorf("reading csr: %w", err)
				}
				der, err := pki.CSRFromPEM(b)
				if err != nil {
					return err
				}
				if crt, err = ca.SignCSR(der, cn, days(nDays)); err != nil {
					return err
				}
			} else {
				if cn == "" {
					return errors.New("--cn is required with --key-out")
				}
				kt := pki.KeyTypeOf(ca.Cert.PublicKey)
				if keyType != "" {
					if kt, err = pki.ParseKeyType(keyType); err != nil {
						return err
					}
				}
				key, err := pki.GenerateKey(kt)
				if err != nil {
					return err
				}
				if crt, err = ca.IssueDevice(key.Public(), cn, days(nDays)); err != nil {
					return err
				}
				kb, err := pki.EncodeKeyPEM(key)
				if err != nil {
					return err
				}
				if err := pki.WriteFileAtomic(keyOut, kb, 0o600); err != nil {
					return err
				}
			}
			pemOut := pki.EncodeCertPEM(crt)
			if chain {
				pemOut = append(pemOut, pki.EncodeCertPEM(ca.Cert)...)
			}
			if err := pki.WriteFileAtomic(out, pemOut, 0o644); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "cn            %s\nserial        %s\nnot after     %s\nsha256        %s\ncredential id %s\n",
				crt.Subject.CommonName, pki.SerialHex(crt), crt.NotAfter.UTC().Format(time.RFC3339),
				pki.Fingerprint(crt.Raw), pki.CredentialID(crt.Raw))
			return nil
		},
	}
	c.Flags().StringVar(&caDir, "ca-dir", "", "CA directory (required)")
	c.Flags().StringVar(&cn, "cn", "", "common name, e.g. SN-000001 (default with --csr: the CSR's)")
	c.Flags().StringVar(&csrPath, "csr", "", "sign this CSR (PEM or DER)")
	c.Flags().StringVar(&keyOut, "key-out", "", "generate a key and write it here (PKCS#8 PEM, 0600)")
	c.Flags().StringVar(&keyType, "key-type", "", "key type with --key-out: ec or rsa (default: the device CA's)")
	c.Flags().StringVar(&out, "out", "", "certificate to write (required)")
	c.Flags().IntVar(&nDays, "days", 1095, "validity in days")
	c.Flags().BoolVar(&chain, "chain", false, "append the device CA certificate after the leaf")
	for _, f := range []string{"ca-dir", "out"} {
		_ = c.MarkFlagRequired(f)
	}
	return c
}

func caIssueServerCmd() *cobra.Command {
	var dir string
	var hosts []string
	c := &cobra.Command{
		Use:   "issue-server",
		Short: "(Re)make server.crt and server.key in --dir for localhost, 127.0.0.1 and --host names",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := pki.IssueServer(dir, hosts); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s and %s\n", filepath.Join(dir, pki.ServerCertFile), filepath.Join(dir, pki.ServerKeyFile))
			return nil
		},
	}
	c.Flags().StringVar(&dir, "dir", "", "CA directory (required)")
	c.Flags().StringSliceVar(&hosts, "host", nil, "extra DNS name or IP address (repeatable)")
	_ = c.MarkFlagRequired("dir")
	return c
}

func caRevokeCmd() *cobra.Command {
	var caDir, serial, reason string
	c := &cobra.Command{
		Use:   "revoke",
		Short: "Record a serial as revoked in CADIR/revoked.json (publish with 'ca crl')",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ca, err := pki.LoadCA(caDir)
			if err != nil {
				return err
			}
			rec, err := ca.Revoke(serial, reason, time.Time{})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "revoked %s (%s)\n", rec.Serial, rec.Reason)
			return nil
		},
	}
	c.Flags().StringVar(&caDir, "ca-dir", "", "CA directory (required)")
	c.Flags().StringVar(&serial, "serial", "", "serial number in hex (required)")
	c.Flags().StringVar(&reason, "reason", "unspecified", "RFC 5280 reason: "+fmt.Sprint(pki.ReasonNames()))
	for _, f := range []string{"ca-dir", "serial"} {
		_ = c.MarkFlagRequired(f)
	}
	return c
}

func caCRLCmd() *cobra.Command {
	var caDir, out string
	var nDays int
	c := &cobra.Command{
		Use:   "crl",
		Short: "Write a PEM CRL of all revocations, signed by the device CA",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ca, err := pki.LoadCA(caDir)
			if err != nil {
				return err
			}
			der, err := ca.CRL(days(nDays))
			if err != nil {
				return err
			}
			if out == "" || out == "-" {
				_, err := cmd.OutOrStdout().Write(pki.EncodeCRLPEM(der))
				return err
			}
			return pki.WriteFileAtomic(out, pki.EncodeCRLPEM(der), 0o644)
		},
	}
	c.Flags().StringVar(&caDir, "ca-dir", "", "CA directory (required)")
	c.Flags().StringVar(&out, "out", "", "file to write (default stdout)")
	c.Flags().IntVar(&nDays, "days", 30, "days until nextUpdate")
	_ = c.MarkFlagRequired("ca-dir")
	return c
}

func caShowCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "show CERT.pem",
		Short: "Print a certificate's subject, serial, validity, SHA-256 and ThingsBoard credential id",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			b, err := os.ReadFile(args[0])
			if err != nil {
				return fmt.Errorf("reading certificate: %w", err)
			}
			certs, err := pki.ParseCertsPEM(b)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			for i, c := range certs {
				if i > 0 {
					fmt.Fprintln(w)
				}
				fmt.Fprintf(w, "subject       %s\nissuer        %s\nserial        %s\nnot before    %s\nnot after     %s\nca            %v\nsha256        %s\ncredential id %s\n",
					c.Subject, c.Issuer, pki.SerialHex(c), c.NotBefore.UTC().Format(time.RFC3339),
					c.NotAfter.UTC().Format(time.RFC3339), c.IsCA, pki.Fingerprint(c.Raw), pki.CredentialID(c.Raw))
			}
			return nil
		},
	}
}
