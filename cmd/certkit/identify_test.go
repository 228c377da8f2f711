package main

import "testing"

func TestParseVMwareV(t *testing.T) {
	c, err := parseVMwareV("VMware ESXi 7.0.3 build-21930508\n")
	if err != nil || c.Product != "VMware ESXi" || c.Version != "7.0.3" || c.Build != "21930508" {
		t.Fatalf("got %+v, %v", c, err)
	}
	if _, err := parseVMwareV("sh: vmware: not found"); err == nil {
		t.Fatal("a host that is not ESXi must be an error naming what it printed")
	}
}
