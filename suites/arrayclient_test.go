package suites

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/certkit/certkit/harness/lab"
	"github.com/certkit/certkit/targets/control"
)

// infoArray is an array that only answers Info.
type infoArray struct{}

func (infoArray) Info() control.Info { return control.Info{Name: "array-1", Product: "certkit"} }
func (infoArray) Inject(string, string) (control.FaultRecord, error) {
	return control.FaultRecord{}, control.Invalidf("no faults here")
}
func (infoArray) Revert(string) (control.FaultRecord, error) {
	return control.FaultRecord{}, control.NotFoundf("no faults here")
}
func (infoArray) Faults() []control.FaultRecord { return nil }

// A lab profile's control.tls is what lets the harness reach an array
// served with mutual TLS; without the client certificate it cannot.
func TestArrayClientUsesTheProfilesTLSFiles(t *testing.T) {
	certs, err := control.GenerateCerts(t.TempDir(), []string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	srvTLS, err := control.LoadServerTLS(certs.ServerCert, certs.ServerKey, certs.CA)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := control.Serve("127.0.0.1:0", infoArray{}, "tok", control.ServeTLS(srvTLS))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	mtls := lab.Control{URL: srv.URL(), Token: "tok", TLS: &lab.ControlTLS{CA: certs.CA, Cert: certs.ClientCert, Key: certs.ClientKey}}
	c, err := ArrayClient(mtls)
	if err != nil {
		t.Fatal(err)
	}
	if info, err := c.Info(ctx); err != nil || info.Name != "array-1" {
		t.Fatalf("Info over mutual TLS = %+v, %v", info, err)
	}

	noCert := lab.Control{URL: srv.URL(), Token: "tok", TLS: &lab.ControlTLS{CA: certs.CA}}
	c, err = ArrayClient(noCert)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Info(ctx); err == nil {
		t.Fatal("an array requiring mutual TLS answered a client without a certificate")
	}

	missing := lab.Control{URL: srv.URL(), Token: "tok", TLS: &lab.ControlTLS{CA: certs.CA + ".missing"}}
	if _, err := ArrayClient(missing); err == nil || !strings.Contains(err.Error(), "control.tls") {
		t.Fatalf("ArrayClient with a missing CA file = %v, want an error naming control.tls", err)
	}
}
