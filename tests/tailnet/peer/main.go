// tailnet-peer: a plain tsnet node for via's tests (the far side). It listens on the given
// tailnet ports; every connection is recorded as one JSON line in -record and answered with
// "peer <hostname> saw <remote addr>: <first line>\n". A loopback HTTP endpoint lets the test
// dial from this node: GET /dial?addr=host:port&msg=text returns what the far side answered.
// It prints one JSON line {"ips":[...],"name":...,"admin":...} once it is Running.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"tailscale.com/envknob"
	"tailscale.com/logtail"
	"time"

	"tailscale.com/tsnet"
)

func main() {
	hostname := flag.String("hostname", "peer", "")
	dir := flag.String("dir", "", "state dir")
	control := flag.String("control", "", "control URL")
	authKey := flag.String("authkey", "", "")
	ports := flag.String("listen", "", "comma-separated tailnet ports to listen on")
	record := flag.String("record", "", "file that gets one JSON line per accepted connection")
	verbose := flag.Bool("v", false, "log tsnet's backend chatter")
	httpPorts := flag.String("http", "", "comma-separated tailnet ports to serve HTTP on")
	flag.Parse()
	// No log uploads (and so no DNS or DERP bootstrap lookups for the log host): everything
	// this node says stays in its own stderr.
	envknob.SetNoLogsNoSupport()
	logtail.Disable()
	srv := &tsnet.Server{Hostname: *hostname, Dir: *dir, ControlURL: *control, AuthKey: *authKey,
		Logf: func(string, ...any) {}}
	if *verbose {
		srv.Logf = log.Printf
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	st, err := srv.Up(ctx)
	cancel()
	if err != nil {
		log.Fatalf("up: %v", err)
	}
	var mu sync.Mutex
	rec := func(v any) {
		if *record == "" {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		f, err := os.OpenFile(*record, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			return
		}
		j, _ := json.Marshal(v)
		f.Write(append(j, '\n'))
		f.Close()
	}
	for _, p := range strings.Split(*ports, ",") {
		if p == "" {
			continue
		}
		ln, err := srv.Listen("tcp", ":"+p)
		if err != nil {
			log.Fatalf("listen %s: %v", p, err)
		}
		go func(port string) {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func(c net.Conn) {
					defer c.Close()
					c.SetDeadline(time.Now().Add(20 * time.Second))
					line, _ := bufio.NewReader(c).ReadString('\n')
					line = strings.TrimRight(line, "\r\n")
					rec(map[string]string{"port": port, "remote": c.RemoteAddr().String(), "line": line})
					fmt.Fprintf(c, "peer %s saw %s: %s\n", *hostname, c.RemoteAddr(), line)
				}(c)
			}
		}(p)
	}
	for _, p := range strings.Split(*httpPorts, ",") {
		if p == "" {
			continue
		}
		ln, err := srv.Listen("tcp", ":"+p)
		if err != nil {
			log.Fatalf("listen %s: %v", p, err)
		}
		port := p
		go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			rec(map[string]string{"port": port, "remote": r.RemoteAddr, "line": r.Method + " " + r.URL.Path,
				"host": r.Host, "agent": r.UserAgent()})
			fmt.Fprintf(w, "hello from %s, you are %s\n", *hostname, r.RemoteAddr)
		}))
	}
	admin, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	http.HandleFunc("/dial", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 20*time.Second)
		defer cancel()
		c, err := srv.Dial(ctx, "tcp", r.URL.Query().Get("addr"))
		if err != nil {
			http.Error(w, "dial: "+err.Error(), 502)
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(15 * time.Second))
		fmt.Fprintf(c, "%s\n", r.URL.Query().Get("msg"))
		if cw, ok := c.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		}
		b, err := io.ReadAll(c)
		if err != nil && len(b) == 0 {
			http.Error(w, "read: "+err.Error(), 502)
			return
		}
		w.Write(b)
	})
	go http.Serve(admin, nil)
	var ips []string
	for _, ip := range st.TailscaleIPs {
		ips = append(ips, ip.String())
	}
	j, _ := json.Marshal(map[string]any{"ips": ips, "name": st.Self.DNSName, "admin": admin.Addr().String()})
	fmt.Println(string(j))
	os.Stdout.Sync()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	srv.Close()
}
