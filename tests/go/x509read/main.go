// x509read prints, as one JSON line per input line, what Go's crypto/x509 reads from a
// certificate request or a certificate: the reading kube-apiserver, kube-controller-manager and
// every Go TLS client act on. csr-warden's tests compare it with csr-warden's own reading.
//
// Input lines: "csr <base64 DER>", "cert <base64 DER>", or "gencsr" (a request made by
// x509.CreateCertificateRequest, as Go-based clients such as the kubelet make them).
// Standard library only, so it builds offline.
package main

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"unicode/utf8"
)

// The subject UID attributes: Kubernetes' own (what kube-apiserver's x509 authenticator reads
// as the user's UID, gate AllowParsingUserUIDFromCertAuth, on by default since 1.34), and
// RFC 4519's uid, which csr-warden treats as a UID too.
var oidUIDs = []asn1.ObjectIdentifier{
	{1, 3, 6, 1, 4, 1, 57683, 2},
	{0, 9, 2342, 19200300, 100, 1, 1},
}

func isUID(oid asn1.ObjectIdentifier) bool {
	for _, uid := range oidUIDs {
		if oid.Equal(uid) {
			return true
		}
	}
	return false
}

type name struct {
	OID   string  `json:"oid"`
	Value *string `json:"value"`
	// The Go type of a value that is not a string (e.g. "[]uint8", "*big.Int"), for messages.
	GoType string `json:"go_type,omitempty"`
}

type extension struct {
	OID      string `json:"oid"`
	Critical bool   `json:"critical"`
}

type failure struct {
	OK    bool   `json:"ok"`
	Error string `json:"error"`
}

type reading struct {
	OK bool `json:"ok"`

	CN           string   `json:"cn"`
	O            []string `json:"o"`
	UIDs         []string `json:"uids"`
	UIDNonString bool     `json:"uid_non_string"`
	Names        []name   `json:"names"`
	DNS          []string `json:"dns"`
	IPs          []string `json:"ips"`
	Emails       []string `json:"emails"`
	URIs         []string `json:"uris"`
	SPKI         *string  `json:"spki"`
	// Fields whose strings are not valid UTF-8: JSON would replace their bytes, so an equal
	// looking value would not prove equal bytes.
	NonUTF8 []string `json:"non_utf8"`

	SignatureOK *bool       `json:"signature_ok,omitempty"`
	Extensions  []extension `json:"extensions"`

	// Certificates only.
	KeyUsage              *int     `json:"key_usage,omitempty"`
	ExtKeyUsage           []int    `json:"ext_key_usage,omitempty"`
	UnknownExtKeyUsage    []string `json:"unknown_ext_key_usage,omitempty"`
	BasicConstraintsValid *bool    `json:"basic_constraints_valid,omitempty"`
	IsCA                  *bool    `json:"is_ca,omitempty"`
	UnhandledCritical     []string `json:"unhandled_critical,omitempty"`
}

type generated struct {
	OK  bool   `json:"ok"`
	DER string `json:"der"`
}

func main() {
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 1<<22)
	out := bufio.NewWriter(os.Stdout)
	encoder := json.NewEncoder(out)
	for in.Scan() {
		line := strings.TrimSpace(in.Text())
		if line == "" {
			continue
		}
		if err := encoder.Encode(answer(line)); err != nil {
			fmt.Fprintln(os.Stderr, "x509read:", err)
			os.Exit(1)
		}
		// Flush per line: a long-lived caller waits for each answer.
		if err := out.Flush(); err != nil {
			os.Exit(1)
		}
	}
	if err := in.Err(); err != nil {
		fmt.Fprintln(os.Stderr, "x509read:", err)
		os.Exit(1)
	}
}

func failed(err error) failure { return failure{OK: false, Error: err.Error()} }

func answer(line string) any {
	kind, payload, _ := strings.Cut(line, " ")
	if kind == "gencsr" {
		return generate()
	}
	der, err := base64.StdEncoding.DecodeString(payload)
	if err != nil {
		return failed(fmt.Errorf("bad base64: %w", err))
	}
	switch kind {
	case "csr":
		csr, err := x509.ParseCertificateRequest(der)
		if err != nil {
			return failed(err)
		}
		r := common(csr.Subject, csr.DNSNames, csr.IPAddresses, csr.EmailAddresses, csr.URIs, csr.PublicKey, csr.Extensions)
		ok := csr.CheckSignature() == nil
		r.SignatureOK = &ok
		return r
	case "cert":
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			return failed(err)
		}
		r := common(cert.Subject, cert.DNSNames, cert.IPAddresses, cert.EmailAddresses, cert.URIs, cert.PublicKey, cert.Extensions)
		keyUsage := int(cert.KeyUsage)
		r.KeyUsage = &keyUsage
		r.ExtKeyUsage = []int{}
		for _, usage := range cert.ExtKeyUsage {
			r.ExtKeyUsage = append(r.ExtKeyUsage, int(usage))
		}
		r.UnknownExtKeyUsage = oids(cert.UnknownExtKeyUsage)
		valid, isCA := cert.BasicConstraintsValid, cert.IsCA
		r.BasicConstraintsValid, r.IsCA = &valid, &isCA
		r.UnhandledCritical = oids(cert.UnhandledCriticalExtensions)
		return r
	default:
		return failed(fmt.Errorf("unknown kind %q (want csr, cert or gencsr)", kind))
	}
}

func oids(list []asn1.ObjectIdentifier) []string {
	out := []string{}
	for _, oid := range list {
		out = append(out, oid.String())
	}
	return out
}

func common(subject pkix.Name, dns []string, ips []net.IP, emails []string, uris []*url.URL, key any, extensions []pkix.Extension) reading {
	r := reading{
		OK: true, CN: subject.CommonName, O: nonNil(subject.Organization), UIDs: []string{},
		Names: []name{}, DNS: nonNil(dns), IPs: []string{}, Emails: nonNil(emails), URIs: []string{},
		NonUTF8: []string{}, Extensions: []extension{},
	}
	check := func(field string, values ...string) {
		for _, v := range values {
			if !utf8.ValidString(v) {
				r.NonUTF8 = append(r.NonUTF8, field)
				return
			}
		}
	}
	check("cn", r.CN)
	check("o", r.O...)
	check("dns", r.DNS...)
	check("emails", r.Emails...)
	for _, atv := range subject.Names {
		entry := name{OID: atv.Type.String()}
		if value, ok := atv.Value.(string); ok {
			entry.Value = &value
			check("names", value)
		} else {
			entry.GoType = fmt.Sprintf("%T", atv.Value)
		}
		r.Names = append(r.Names, entry)
		// What kube-apiserver's x509 authenticator reads as the user's UID.
		if isUID(atv.Type) {
			if entry.Value != nil {
				r.UIDs = append(r.UIDs, *entry.Value)
			} else {
				r.UIDNonString = true
			}
		}
	}
	for _, ip := range ips {
		r.IPs = append(r.IPs, ip.String())
	}
	for _, uri := range uris {
		r.URIs = append(r.URIs, uri.String())
	}
	check("uris", r.URIs...)
	// Go's canonical re-encoding of the key it parsed: equal bytes prove the same key.
	if key != nil {
		if spki, err := x509.MarshalPKIXPublicKey(key); err == nil {
			encoded := base64.StdEncoding.EncodeToString(spki)
			r.SPKI = &encoded
		}
	}
	for _, ext := range extensions {
		r.Extensions = append(r.Extensions, extension{OID: ext.Id.String(), Critical: ext.Critical})
	}
	return r
}

func nonNil(values []string) []string {
	if values == nil {
		return []string{}
	}
	return values
}

// generate makes a request as Go clients do: P-256, CN and O, SANs of every kind.
func generate() any {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return failed(err)
	}
	uri, err := url.Parse("spiffe://cluster.local/ns/default/sa/go")
	if err != nil {
		return failed(err)
	}
	template := &x509.CertificateRequest{
		Subject:        pkix.Name{CommonName: "system:node:go-made", Organization: []string{"system:nodes"}},
		DNSNames:       []string{"go-made.example.com"},
		IPAddresses:    []net.IP{net.ParseIP("10.0.0.7"), net.ParseIP("fd00::7")},
		EmailAddresses: []string{"go@example.com"},
		URIs:           []*url.URL{uri},
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, template, key)
	if err != nil {
		return failed(err)
	}
	return generated{OK: true, DER: base64.StdEncoding.EncodeToString(der)}
}
