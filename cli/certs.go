package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/thingline/thingline/pki"
)

// Operator commands of the certificate life cycle, all through the REST
// API: a device's credentials, revoking one, the fleet's expiry view,
// CRL import and the server's CRL. See docs/certificates.md.

func init() {
	register(newCertsCmd)
	register(newCRLCmd)
}

func newCertsCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "certs",
		Short: "The fleet's device certificates: expiry view",
	}
	c.AddCommand(newCertsExpiryCmd())
	return c
}

func newCertsExpiryCmd() *cobra.Command {
	var api apiClient
	var limit int
	c := &cobra.Command{
		Use:   "expiry",
		Short: "Show how many current device certificates expire each month, and the soonest",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var v struct {
				Total   int            `json:"total"`
				Expired int            `json:"expired"`
				Within  map[string]int `json:"within"`
				Months  []struct {
					Month string `json:"month"`
					Count int    `json:"count"`
				} `json:"months"`
				Soonest []struct {
					Device   string    `json:"device"`
					Serial   string    `json:"serial"`
					NotAfter time.Time `json:"notAfter"`
				} `json:"soonest"`
			}
			if err := api.getJSON(cmd.Context(), "/api/v1/certificates/expiry?limit="+strconv.Itoa(limit), &v); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "%d current certificates: %d expired, %d within 30 days, %d within 90 days, %d within a year\n",
				v.Total, v.Expired, v.Within["30d"], v.Within["90d"], v.Within["365d"])
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "MONTH\tEXPIRING")
			for _, m := range v.Months {
				fmt.Fprintf(tw, "%s\t%d\n", m.Month, m.Count)
			}
			tw.Flush()
			if len(v.Soonest) > 0 {
				fmt.Fprintln(out)
				tw = tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "DEVICE\tSERIAL\tNOT AFTER\tDAYS LEFT")
				for _, s := range v.Soonest {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%d\n", s.Device, s.Serial, s.NotAfter.UTC().Format(time.RFC3339), int(time.Until(s.NotAfter).Hours()/24))
				}
				tw.Flush()
			}
			return nil
		},
	}
	api.addFlags(c)
	c.Flags().IntVar(&limit, "limit", 20, "how many of the soonest to list")
	return c
}

func newDeviceCredentialsCmd() *cobra.Command {
	var api apiClient
	c := &cobra.Command{
		Use:   "credentials NAME",
		Short: "List a device's certificates, newest first, with their status (through the REST API)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var v struct {
				Credentials []struct {
					Serial     string    `json:"serial"`
					NotAfter   time.Time `json:"notAfter"`
					LastSeen   time.Time `json:"lastSeen"`
					Status     string    `json:"status"`
					RetireAt   time.Time `json:"retireAt"`
					Revocation *struct {
						Reason    string    `json:"reason"`
						RevokedAt time.Time `json:"revokedAt"`
					} `json:"revocation"`
				} `json:"credentials"`
			}
			if err := api.getJSON(cmd.Context(), "/api/v1/devices/"+url.PathEscape(args[0])+"/credentials", &v); err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "SERIAL\tSTATUS\tNOT AFTER\tLAST SEEN\tNOTE")
			for _, c := range v.Credentials {
				note := ""
				switch {
				case c.Revocation != nil:
					note = c.Revocation.Reason + " at " + c.Revocation.RevokedAt.UTC().Format(time.RFC3339)
				case !c.RetireAt.IsZero():
					note = "revoked at " + c.RetireAt.UTC().Format(time.RFC3339)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", c.Serial, c.Status, c.NotAfter.UTC().Format(time.RFC3339),
					c.LastSeen.UTC().Format(time.RFC3339), note)
			}
			return tw.Flush()
		},
	}
	api.addFlags(c)
	return c
}

func newDeviceRevokeCmd() *cobra.Command {
	var api apiClient
	var serial, reason string
	c := &cobra.Command{
		Use:   "revoke NAME",
		Short: "Revoke a device's certificate in use (or --serial): its session is closed and every reconnect refused",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := pki.ReasonCode(reason); err != nil {
				return err
			}
			body, _ := json.Marshal(map[string]string{"serial": serial, "reason": reason})
			b, err := api.do(cmd.Context(), "POST", "/api/v1/devices/"+url.PathEscape(args[0])+"/credentials/revoke", "application/json", body)
			if err != nil {
				return err
			}
			var v struct {
				Device string `json:"device"`
				Serial string `json:"serial"`
				Reason string `json:"reason"`
			}
			if err := json.Unmarshal(b, &v); err != nil {
				return fmt.Errorf("undecodable answer: %w", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: certificate %s revoked (%s)\n", v.Device, v.Serial, v.Reason)
			return nil
		},
	}
	api.addFlags(c)
	c.Flags().StringVar(&serial, "serial", "", "revoke this certificate of the device (hex) instead of the one in use")
	c.Flags().StringVar(&reason, "reason", "", "RFC 5280 reason: keyCompromise, cessationOfOperation, superseded… (default unspecified)")
	return c
}

func newCRLCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "crl",
		Short: "Certificate revocation lists: import one into the server, fetch the server's",
	}
	c.AddCommand(newCRLImportCmd(), newCRLFetchCmd())
	return c
}

func newCRLImportCmd() *cobra.Command {
	var api apiClient
	c := &cobra.Command{
		Use:   "import FILE",
		Short: "Import a CRL (PEM or DER, from thingline ca crl or openssl ca -gencrl) into the server's revocations",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			b, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			if _, err := pki.ParseCRL(b, nil); err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			out, err := api.do(cmd.Context(), "POST", "/api/v1/crls", "application/pkix-crl", b)
			if err != nil {
				return err
			}
			var v struct {
				Issuer  string `json:"issuer"`
				Number  string `json:"number"`
				Entries int    `json:"entries"`
				Added   int    `json:"added"`
				Stale   bool   `json:"stale"`
			}
			if err := json.Unmarshal(out, &v); err != nil {
				return fmt.Errorf("undecodable answer: %w", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "CRL %s of %s: %d entries, %d new revocations\n", v.Number, v.Issuer, v.Entries, v.Added)
			if v.Stale {
				fmt.Fprintf(cmd.ErrOrStderr(), "warning: the CRL's nextUpdate has passed; its issuer may have published a newer one\n")
			}
			return nil
		},
	}
	api.addFlags(c)
	return c
}

func newCRLFetchCmd() *cobra.Command {
	var api apiClient
	var outFile string
	c := &cobra.Command{
		Use:   "fetch",
		Short: "Download the server's CRL (DER), signed by its issuing CA",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if outFile == "" {
				return errors.New("crl fetch: --out is required")
			}
			b, err := api.do(cmd.Context(), "GET", "/crl/device-ca.crl", "", nil)
			if err != nil {
				return err
			}
			crl, err := pki.ParseCRL(b, nil)
			if err != nil {
				return err
			}
			if err := pki.WriteFileAtomic(outFile, b, 0o644); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: CRL %s of %s, %d entries, next update %s\n", outFile, crl.Number, crl.Issuer,
				len(crl.RevokedCertificateEntries), crl.NextUpdate.UTC().Format(time.RFC3339))
			return nil
		},
	}
	api.addFlags(c)
	c.Flags().StringVarP(&outFile, "out", "o", "", "file to write the CRL to")
	return c
}
