// tailnet-control: a complete local tailnet control plane for via's tests, on 127.0.0.1 only:
// tailscale.com's testcontrol (the coordination server Tailscale's own integration tests use),
// a DERP relay (TLS, self-signed, InsecureForTests) and a STUN server. It prints one JSON line
// with its URLs on stdout and runs until SIGTERM.
//
// Admin endpoints (plain HTTP on the same port, for the tests' assertions):
//
//	GET /via/nodes  -> [{"name","hostname","ips","online","key"}]  online = a map poll is open
package main

import (
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"tailscale.com/derp/derpserver"
	"tailscale.com/net/stun"
	"tailscale.com/tailcfg"
	"tailscale.com/tstest/integration/testcontrol"
	"tailscale.com/types/key"
)

func main() {
	authKey := flag.String("authkey", "", "the only auth key the control server accepts (empty: any)")
	domain := flag.String("magicdns", "tailnet.test", "MagicDNS suffix")
	verbose := flag.Bool("v", false, "log control server chatter")
	flag.Parse()
	logf := func(string, ...any) {}
	if *verbose {
		logf = log.Printf
	}

	// DERP over TLS on loopback.
	d := derpserver.New(key.NewNode(), logf)
	dln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	dsrv := httptest.NewUnstartedServer(derpserver.Handler(d))
	dsrv.Listener.Close()
	dsrv.Listener = dln
	dsrv.Config.TLSNextProto = make(map[string]func(*http.Server, *tls.Conn, http.Handler))
	dsrv.StartTLS()

	// STUN on loopback.
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	go func() {
		buf := make([]byte, 1500)
		for {
			n, addr, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			tx, err := stun.ParseBindingRequest(buf[:n])
			if err != nil {
				continue
			}
			ua := addr.(*net.UDPAddr)
			ap := netip.AddrPortFrom(netip.MustParseAddr(ua.IP.String()), uint16(ua.Port))
			pc.WriteTo(stun.Response(tx, ap), addr)
		}
	}()

	derpMap := &tailcfg.DERPMap{Regions: map[int]*tailcfg.DERPRegion{
		1: {RegionID: 1, RegionCode: "test", Nodes: []*tailcfg.DERPNode{{
			Name: "t1", RegionID: 1, HostName: "127.0.0.1", IPv4: "127.0.0.1", IPv6: "none",
			STUNPort: pc.LocalAddr().(*net.UDPAddr).Port, DERPPort: dln.Addr().(*net.TCPAddr).Port,
			InsecureForTests: true, STUNTestIP: "127.0.0.1",
		}}},
	}}

	var mu sync.Mutex
	online := map[key.NodePublic]int{}
	ctl := &testcontrol.Server{
		DERPMap:          derpMap,
		RequireAuthKey:   *authKey,
		MagicDNSDomain:   *domain,
		AllNodesSameUser: true,
		AllOnline:        true,
		Logf:             logf,
		DNSConfig:        &tailcfg.DNSConfig{Proxied: true, Domains: []string{*domain}},
		HoldMapRequest: func(req *tailcfg.MapRequest) func() {
			if !req.Stream {
				return nil
			}
			mu.Lock()
			online[req.NodeKey]++
			mu.Unlock()
			return func() {
				mu.Lock()
				online[req.NodeKey]--
				mu.Unlock()
			}
		},
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	base := "http://" + ln.Addr().String()
	ctl.ExplicitBaseURL = base
	mux := http.NewServeMux()
	mux.HandleFunc("/via/nodes", func(w http.ResponseWriter, r *http.Request) {
		type node struct {
			Name     string   `json:"name"`
			Hostname string   `json:"hostname"`
			IPs      []string `json:"ips"`
			Online   bool     `json:"online"`
			Key      string   `json:"key"`
		}
		out := []node{}
		for _, n := range ctl.AllNodes() {
			var ips []string
			for _, p := range n.Addresses {
				ips = append(ips, p.Addr().String())
			}
			mu.Lock()
			on := online[n.Key] > 0
			mu.Unlock()
			out = append(out, node{Name: n.Name, Hostname: n.Hostinfo.Hostname(), IPs: ips, Online: on, Key: n.Key.String()})
		}
		json.NewEncoder(w).Encode(out)
	})
	mux.Handle("/", ctl)
	go http.Serve(ln, mux)

	j, _ := json.Marshal(map[string]string{
		"control_url": base,
		"derp":        dln.Addr().String(),
		"stun":        pc.LocalAddr().String(),
	})
	fmt.Println(string(j))
	os.Stdout.Sync()

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
}
