package cli

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"
)

// Account, token and ownership commands, all through the REST API (see
// docs/accounts.md and docs/ownership.md). Each prints the API's JSON
// answer, indented.

func init() {
	register(newUserCmd)
	register(newTokenCmd)
	register(newLoginCmd)
	register(newOwnershipCmd)
}

// apiCall is one REST call a command makes from its arguments and flags.
type apiCall func(cmd *cobra.Command, args []string) (method, path string, body any, err error)

// apiCmd makes a command that runs call against the API and prints the
// answer.
func apiCmd(use, short string, args cobra.PositionalArgs, call apiCall, flags func(c *cobra.Command)) *cobra.Command {
	var api apiClient
	c := &cobra.Command{
		Use: use, Short: short, Args: args,
		RunE: func(cmd *cobra.Command, args []string) error {
			method, path, body, err := call(cmd, args)
			if err != nil {
				return err
			}
			var raw []byte
			if body != nil {
				if raw, err = json.Marshal(body); err != nil {
					return err
				}
			}
			out, err := api.do(cmd.Context(), method, path, "application/json", raw)
			if err != nil {
				return err
			}
			var buf bytes.Buffer
			if len(out) == 0 {
				return nil
			}
			if json.Indent(&buf, out, "", "  ") != nil {
				buf.Reset()
				buf.Write(out)
			}
			fmt.Fprintln(cmd.OutOrStdout(), strings.TrimSpace(buf.String()))
			return nil
		},
	}
	api.addFlags(c)
	if flags != nil {
		flags(c)
	}
	return c
}

// password reads a password from the flag, THINGLINE_PASSWORD, or the
// terminal, so that it need not appear in the shell's history.
func password(cmd *cobra.Command, flag string) (string, error) {
	if v, _ := cmd.Flags().GetString(flag); v != "" {
		return v, nil
	}
	if v := os.Getenv("THINGLINE_PASSWORD"); v != "" {
		return v, nil
	}
	if !term.IsTerminal(int(os.Stdin.Fd())) {
		return "", fmt.Errorf("give --%s or THINGLINE_PASSWORD (no terminal to ask on)", flag)
	}
	fmt.Fprint(cmd.ErrOrStderr(), "password: ")
	b, err := term.ReadPassword(int(os.Stdin.Fd()))
	fmt.Fprintln(cmd.ErrOrStderr())
	return string(b), err
}

func userPath(name string) string { return "/api/v1/users/" + url.PathEscape(name) }

func newUserCmd() *cobra.Command {
	c := &cobra.Command{Use: "user", Short: "Accounts: add, list, show, disable, enable, set a password, delete (admin)"}
	c.AddCommand(
		apiCmd("add USERNAME", "Create an account (role user, operator or admin)", cobra.ExactArgs(1),
			func(cmd *cobra.Command, args []string) (string, string, any, error) {
				pw, err := password(cmd, "password")
				if err != nil {
					return "", "", nil, err
				}
				role, _ := cmd.Flags().GetString("role")
				return "POST", "/api/v1/users", map[string]string{"username": args[0], "password": pw, "role": role}, nil
			}, func(c *cobra.Command) {
				c.Flags().String("role", "user", "user, operator or admin")
				c.Flags().String("password", "", "the password (default THINGLINE_PASSWORD, or asked)")
			}),
		apiCmd("list", "List accounts", cobra.NoArgs,
			func(cmd *cobra.Command, _ []string) (string, string, any, error) {
				return "GET", "/api/v1/users?limit=1000", nil, nil
			}, nil),
		apiCmd("show USERNAME", "Show an account and the devices it owns", cobra.ExactArgs(1),
			func(cmd *cobra.Command, args []string) (string, string, any, error) {
				return "GET", userPath(args[0]), nil, nil
			}, nil),
		apiCmd("disable USERNAME", "Disable an account: every token it holds is revoked", cobra.ExactArgs(1),
			func(cmd *cobra.Command, args []string) (string, string, any, error) {
				return "PATCH", userPath(args[0]), map[string]bool{"disabled": true}, nil
			}, nil),
		apiCmd("enable USERNAME", "Enable a disabled account", cobra.ExactArgs(1),
			func(cmd *cobra.Command, args []string) (string, string, any, error) {
				return "PATCH", userPath(args[0]), map[string]bool{"disabled": false}, nil
			}, nil),
		apiCmd("passwd USERNAME", "Set an account's password; its sessions end", cobra.ExactArgs(1),
			func(cmd *cobra.Command, args []string) (string, string, any, error) {
				pw, err := password(cmd, "password")
				if err != nil {
					return "", "", nil, err
				}
				return "PATCH", userPath(args[0]), map[string]string{"password": pw}, nil
			}, func(c *cobra.Command) {
				c.Flags().String("password", "", "the new password (default THINGLINE_PASSWORD, or asked)")
			}),
		apiCmd("delete USERNAME", "Delete an account: its tokens go, its devices are released", cobra.ExactArgs(1),
			func(cmd *cobra.Command, args []string) (string, string, any, error) {
				return "DELETE", userPath(args[0]), nil, nil
			}, nil),
	)
	return c
}

func newTokenCmd() *cobra.Command {
	c := &cobra.Command{Use: "token", Short: "Your API tokens: create, list, revoke"}
	c.AddCommand(
		apiCmd("create", "Make a long-lived API token; its secret is printed once", cobra.NoArgs,
			func(cmd *cobra.Command, _ []string) (string, string, any, error) {
				name, _ := cmd.Flags().GetString("name")
				scopes, _ := cmd.Flags().GetStringSlice("scopes")
				exp, _ := cmd.Flags().GetDuration("expires-in")
				return "POST", "/api/v1/tokens", map[string]any{"name": name, "scopes": scopes, "expiresIn": exp.String()}, nil
			}, func(c *cobra.Command) {
				c.Flags().String("name", "", "what the token is for")
				c.Flags().StringSlice("scopes", []string{"read"}, "read and/or write")
				c.Flags().Duration("expires-in", 90*24*time.Hour, "lifetime, at most 8784h")
			}),
		apiCmd("list", "List your tokens (without secrets)", cobra.NoArgs,
			func(cmd *cobra.Command, _ []string) (string, string, any, error) {
				return "GET", "/api/v1/tokens", nil, nil
			}, nil),
		apiCmd("revoke ID", "Revoke one of your tokens", cobra.ExactArgs(1),
			func(cmd *cobra.Command, args []string) (string, string, any, error) {
				return "DELETE", "/api/v1/tokens/" + url.PathEscape(args[0]), nil, nil
			}, nil),
	)
	return c
}

func newLoginCmd() *cobra.Command {
	return apiCmd("login USERNAME", "Log in with a password and print a session token (THINGLINE_TOKEN)", cobra.ExactArgs(1),
		func(cmd *cobra.Command, args []string) (string, string, any, error) {
			pw, err := password(cmd, "password")
			if err != nil {
				return "", "", nil, err
			}
			return "POST", "/api/v1/auth/login", map[string]string{"username": args[0], "password": pw}, nil
		}, func(c *cobra.Command) {
			c.Flags().String("password", "", "the password (default THINGLINE_PASSWORD, or asked)")
		})
}

func devicePath(name, rest string) string { return "/api/v1/devices/" + url.PathEscape(name) + rest }

func newOwnershipCmd() *cobra.Command {
	c := &cobra.Command{Use: "owner", Short: "Device ownership: claim, whose, release, history, policy"}
	c.AddCommand(
		apiCmd("claim DEVICE", "Claim a device that published a claim request with this secret", cobra.ExactArgs(1),
			func(cmd *cobra.Command, args []string) (string, string, any, error) {
				secret, _ := cmd.Flags().GetString("secret")
				return "POST", devicePath(args[0], "/claim"), map[string]string{"secretKey": secret}, nil
			}, func(c *cobra.Command) { c.Flags().String("secret", "", "the device's secret key") }),
		apiCmd("whose DEVICE", "Whose device this is: mine, unowned or someone-else", cobra.ExactArgs(1),
			func(cmd *cobra.Command, args []string) (string, string, any, error) {
				return "GET", devicePath(args[0], "/whose"), nil, nil
			}, nil),
		apiCmd("release DEVICE", "Give a device up (its owner, or an admin)", cobra.ExactArgs(1),
			func(cmd *cobra.Command, args []string) (string, string, any, error) {
				return "POST", devicePath(args[0], "/release"), nil, nil
			}, nil),
		apiCmd("history DEVICE", "The device's owners and ownership audit log (admin)", cobra.ExactArgs(1),
			func(cmd *cobra.Command, args []string) (string, string, any, error) {
				return "GET", devicePath(args[0], "/owners"), nil, nil
			}, nil),
		apiCmd("policy", "Show or set (--on-reset, --keep-days) the policy for a reset device claimed by another user", cobra.NoArgs,
			func(cmd *cobra.Command, _ []string) (string, string, any, error) {
				onReset, _ := cmd.Flags().GetString("on-reset")
				keep, _ := cmd.Flags().GetInt("keep-days")
				if onReset == "" {
					if cmd.Flags().Changed("keep-days") {
						return "", "", nil, errors.New("owner policy: --keep-days needs --on-reset")
					}
					return "GET", "/api/v1/ownership/policy", nil, nil
				}
				return "PUT", "/api/v1/ownership/policy", map[string]any{"onReset": onReset, "keepDays": keep}, nil
			}, func(c *cobra.Command) {
				c.Flags().String("on-reset", "", "transfer or delete")
				c.Flags().Int("keep-days", 30, "days an ended ownership's data is kept for its owner (0: wiped)")
			}),
	)
	return c
}
