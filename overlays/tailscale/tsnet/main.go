// via-tsnet: the Tailscale node of one `network.tailscale` entry, run and supervised by the via
// broker (docs/tailscale.md). It is the only place where via runs Go: never in the shim, never in
// the broker.
//
// The broker starts it with fd 3 = one end of an AF_UNIX SOCK_SEQPACKET socketpair (the control
// channel). Each message is one datagram: a verb line, then "key=value" lines. The broker sends
// CONFIG first, then LISTEN/UNLISTEN; closing the channel (or SIGTERM) stops the node.
//
// Outbound: a SOCKS5 server on 127.0.0.1:<random port> that accepts only the broker's per-run
// secret (RFC 1929). The broker's ConnectOp connects the program's own TCP socket to it and runs
// a SOCKS5 CONNECT; the helper resolves the name from the tailnet's netmap itself (MagicDNS short
// name, FQDN, or a tailnet address), dials it through the node, and relays bytes. Anything that is
// not on the tailnet is refused: there is no path to the host's network from here.
//
// Inbound: LISTEN port=P makes the node listen on its tailnet addresses, port P only. Each
// accepted connection is spliced to one end of a socketpair; the other end goes to the broker in
// an ACCEPTED message (SCM_RIGHTS).
package main

import (
	"context"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"tailscale.com/envknob"
	"tailscale.com/logtail"
	"time"

	"tailscale.com/client/local"
	"tailscale.com/ipn"
	"tailscale.com/ipn/ipnstate"
	"tailscale.com/ipn/store/mem"
	"tailscale.com/net/tsaddr"
	"tailscale.com/tsnet"
)

type helper struct {
	cfg  map[string]string
	ctl  *net.UnixConn
	wmu  sync.Mutex
	srv  *tsnet.Server // nil in attach mode
	lc   *local.Client
	mode string

	mu        sync.Mutex
	state     string
	errMsg    string
	authURL   string
	listeners map[uint16]net.Listener
	socksAddr string

	// Ends the IPN bus watch at shutdown: tsnet's Close waits (up to 5 s) for the LocalAPI
	// server's open requests, and the watch is one that never ends by itself.
	ctx    context.Context
	cancel context.CancelFunc
}

func main() {
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	log.SetPrefix("via-tsnet: ")
	// No log uploads (and so no DNS or DERP bootstrap lookups for the log host): everything
	// this node says stays in its own stderr.
	envknob.SetNoLogsNoSupport()
	logtail.Disable()
	// SIGTERM is the broker's "stop now", whenever it comes (even before CONFIG): caught from the
	// start, so that it always ends in shutdown (an ephemeral node logs out) and never in Go's
	// default exit, nor is lost.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-sig
		stopping <- struct{}{}
	}()
	f := os.NewFile(3, "control")
	c, err := net.FileConn(f)
	if err != nil {
		fmt.Fprintln(os.Stderr, "via-tsnet: fd 3 is not the broker's control socket; this program is started by `via broker`, not by hand")
		os.Exit(2)
	}
	f.Close()
	uc, ok := c.(*net.UnixConn)
	if !ok {
		fmt.Fprintln(os.Stderr, "via-tsnet: fd 3 is not a Unix socket")
		os.Exit(2)
	}
	h := &helper{ctl: uc, listeners: map[uint16]net.Listener{}, state: "Starting"}
	h.ctx, h.cancel = context.WithCancel(context.Background())
	started := make(chan error, 1)
	go func() {
		verb, kv, err := h.read()
		if err != nil || verb != "CONFIG" {
			started <- fmt.Errorf("expected CONFIG from the broker, got %q (%v)", verb, err)
			return
		}
		h.cfg = kv
		h.mode = kv["mode"]
		err = h.start()
		if err != nil {
			h.send("STATUS", "state", "Failed", "error", err.Error())
		}
		started <- err
	}()
	select {
	case err := <-started:
		if err != nil {
			log.Fatalf("%v", err)
		}
	case <-stopping:
		// Stopped while starting (tsnet's Start returns before the node is up, so this is
		// short): let the start finish, briefly, then shut down what it made.
		select {
		case err := <-started:
			if err == nil {
				h.shutdown()
			}
		case <-time.After(logoutTimeout):
			log.Printf("stopped while starting the node; exiting")
		}
		os.Exit(0)
	}
	go func() { h.controlLoop(); stopping <- struct{}{} }()
	<-stopping
	h.shutdown()
	os.Exit(0)
}

// stopping receives when the broker asks the helper to stop: SIGTERM, or the control channel's end.
var stopping = make(chan struct{}, 2)

// The whole shutdown (listeners closed, an ephemeral node's logout, the node stopped) is bounded:
// the broker waits for the helper (and SIGKILLs it after 10 s), and `via stop` waits for the
// broker.
const (
	logoutTimeout   = 3 * time.Second
	shutdownTimeout = 6 * time.Second
)

// read returns one control message.
func (h *helper) read() (string, map[string]string, error) {
	buf := make([]byte, 65536)
	n, _, _, _, err := h.ctl.ReadMsgUnix(buf, nil)
	if err != nil {
		return "", nil, err
	}
	if n == 0 {
		return "", nil, io.EOF
	}
	lines := strings.Split(string(buf[:n]), "\n")
	kv := map[string]string{}
	for _, l := range lines[1:] {
		if k, v, ok := strings.Cut(l, "="); ok {
			kv[k] = v
		}
	}
	return lines[0], kv, nil
}

func clean(v string) string { return strings.NewReplacer("\n", " ", "\r", " ").Replace(v) }

// send writes one control message; pairs are key, value, key, value...
func (h *helper) send(verb string, pairs ...string) { h.sendFd(-1, verb, pairs...) }

func (h *helper) sendFd(fd int, verb string, pairs ...string) error {
	var b strings.Builder
	b.WriteString(verb)
	for i := 0; i+1 < len(pairs); i += 2 {
		b.WriteString("\n" + pairs[i] + "=" + clean(pairs[i+1]))
	}
	var oob []byte
	if fd >= 0 {
		oob = syscall.UnixRights(fd)
	}
	h.wmu.Lock()
	defer h.wmu.Unlock()
	_, _, err := h.ctl.WriteMsgUnix([]byte(b.String()), oob, nil)
	return err
}

func (h *helper) start() error {
	switch h.mode {
	case "node":
		h.srv = &tsnet.Server{
			Dir:        h.cfg["dir"],
			Hostname:   h.cfg["hostname"],
			AuthKey:    h.cfg["auth_key"],
			ControlURL: h.cfg["control_url"],
			Ephemeral:  h.cfg["ephemeral"] == "1",
			Logf:       func(string, ...any) {}, // backend chatter; UserLogf keeps the useful lines
			UserLogf:   log.Printf,
		}
		if h.cfg["verbose"] == "1" {
			h.srv.Logf = log.Printf
		}
		if h.srv.Dir != "" {
			if err := os.MkdirAll(h.srv.Dir, 0o700); err != nil {
				return fmt.Errorf("cannot create the node's state directory %s: %v", h.srv.Dir, err)
			}
		}
		if h.srv.Ephemeral {
			// Like tailscaled --state=mem:: no node key is kept, so the node never comes back
			// under the same identity after the broker stops.
			h.srv.Store = new(mem.Store)
		}
		if err := h.srv.Start(); err != nil {
			return fmt.Errorf("tsnet start: %v", err)
		}
		lc, err := h.srv.LocalClient()
		if err != nil {
			return fmt.Errorf("tsnet local client: %v", err)
		}
		h.lc = lc
	case "attach":
		h.lc = &local.Client{Socket: h.cfg["socket"], UseSocketOnly: true}
	default:
		return fmt.Errorf("unknown mode %q", h.mode)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("cannot listen on 127.0.0.1 for the broker's connections: %v", err)
	}
	h.socksAddr = ln.Addr().String()
	go h.socksLoop(ln)
	go h.watch()
	return nil
}

// watch follows the node's IPN bus and reports every change of state, error and addresses.
func (h *helper) watch() {
	for h.ctx.Err() == nil {
		ctx, cancel := context.WithCancel(h.ctx)
		w, err := h.lc.WatchIPNBus(ctx, ipn.NotifyInitialState)
		if err != nil {
			cancel()
			if h.ctx.Err() != nil {
				return
			}
			h.setState("Unreachable", fmt.Sprintf("LocalAPI %s: %v", h.cfg["socket"], err), "")
			time.Sleep(time.Second)
			continue
		}
		for {
			n, err := w.Next()
			if err != nil {
				break
			}
			h.mu.Lock()
			if n.ErrMessage != nil {
				h.errMsg = *n.ErrMessage
			}
			if n.BrowseToURL != nil {
				h.authURL = *n.BrowseToURL
			}
			if n.State != nil {
				h.state = n.State.String()
				if *n.State == ipn.Running {
					h.errMsg = ""
				}
			}
			h.mu.Unlock()
			h.report()
		}
		w.Close()
		cancel()
		if h.mode == "node" || h.ctx.Err() != nil {
			return
		}
		h.setState("Unreachable", "the attached tailscaled closed its IPN bus", "")
		time.Sleep(time.Second)
	}
}

func (h *helper) setState(state, errMsg, authURL string) {
	h.mu.Lock()
	h.state, h.errMsg, h.authURL = state, errMsg, authURL
	h.mu.Unlock()
	h.report()
}

// report sends STATUS with the current state and the node's own tailnet identity.
func (h *helper) report() {
	h.mu.Lock()
	state, errMsg, authURL := h.state, h.errMsg, h.authURL
	h.mu.Unlock()
	var ips []string
	name := ""
	health := ""
	if h.lc != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		st, err := h.lc.StatusWithoutPeers(ctx)
		cancel()
		if err == nil {
			for _, ip := range st.TailscaleIPs {
				ips = append(ips, ip.String())
			}
			if st.Self != nil {
				name = st.Self.DNSName
			}
			health = strings.Join(st.Health, "; ")
			if st.BackendState != "" && state != "Unreachable" {
				state = st.BackendState
			}
		}
	}
	h.send("STATUS", "state", state, "error", errMsg, "health", health, "auth_url", authURL,
		"ips", strings.Join(ips, ","), "name", name, "socks", h.socksAddr)
}

func (h *helper) controlLoop() {
	for {
		verb, kv, err := h.read()
		if err != nil {
			return // the broker is gone or asked us to stop
		}
		switch verb {
		case "LISTEN":
			h.listen(kv["port"])
		case "UNLISTEN":
			p, _ := strconv.Atoi(kv["port"])
			h.mu.Lock()
			if ln := h.listeners[uint16(p)]; ln != nil {
				ln.Close()
				delete(h.listeners, uint16(p))
			}
			h.mu.Unlock()
		case "STATUS":
			h.report()
		case "STOP":
			return
		}
	}
}

func (h *helper) listen(portText string) {
	p, err := strconv.Atoi(portText)
	if err != nil || p <= 0 || p > 65535 {
		h.send("LISTEN_FAILED", "port", portText, "error", "bad port")
		return
	}
	if h.srv == nil {
		h.send("LISTEN_FAILED", "port", portText, "error",
			"inbound listeners need a node run by via; an entry attached to a tailscaled (localapi_socket) can only dial out")
		return
	}
	ln, err := h.srv.Listen("tcp", fmt.Sprintf(":%d", p))
	if err != nil {
		h.send("LISTEN_FAILED", "port", portText, "error", err.Error())
		return
	}
	h.mu.Lock()
	h.listeners[uint16(p)] = ln
	h.mu.Unlock()
	ip4, ip6 := h.srv.TailscaleIPs()
	addrs := []string{}
	if ip4.IsValid() {
		addrs = append(addrs, netip.AddrPortFrom(ip4, uint16(p)).String())
	}
	if ip6.IsValid() {
		addrs = append(addrs, netip.AddrPortFrom(ip6, uint16(p)).String())
	}
	h.send("LISTENING", "port", portText, "addr", strings.Join(addrs, ","))
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go h.handOff(uint16(p), c)
		}
	}()
}

// handOff splices an accepted tailnet conn to a socketpair and sends the other end to the broker.
func (h *helper) handOff(port uint16, c net.Conn) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		c.Close()
		return
	}
	mine := os.NewFile(uintptr(fds[0]), "accepted")
	mc, err := net.FileConn(mine)
	mine.Close()
	if err != nil {
		syscall.Close(fds[1])
		c.Close()
		return
	}
	peer := c.RemoteAddr().String()
	name := ""
	if ap, err := netip.ParseAddrPort(peer); err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if who, err := h.lc.WhoIs(ctx, peer); err == nil && who.Node != nil {
			name = strings.TrimSuffix(who.Node.Name, ".")
		}
		cancel()
		if name == "" {
			name = ap.Addr().String()
		}
	}
	err = h.sendFd(fds[1], "ACCEPTED", "port", strconv.Itoa(int(port)), "peer", peer, "name", name)
	syscall.Close(fds[1])
	if err != nil {
		mc.Close()
		c.Close()
		return
	}
	relay(c, mc)
}

func (h *helper) shutdown() {
	t0 := time.Now()
	timer := time.AfterFunc(shutdownTimeout, func() {
		log.Printf("shutdown still not done after %v; exiting", shutdownTimeout)
		os.Exit(1)
	})
	defer timer.Stop()
	h.cancel() // the IPN bus watch
	h.mu.Lock()
	for _, ln := range h.listeners {
		ln.Close()
	}
	h.mu.Unlock()
	if h.srv != nil {
		if h.srv.Ephemeral && h.lc != nil {
			// Leave the tailnet now rather than when control notices the node is gone.
			ctx, cancel := context.WithTimeout(context.Background(), logoutTimeout)
			if err := h.lc.Logout(ctx); err != nil {
				log.Printf("logout of ephemeral node: %v", err)
			} else {
				log.Printf("ephemeral node logged out")
			}
			cancel()
		}
		h.srv.Close()
	}
	log.Printf("stopped in %v", time.Since(t0).Round(time.Millisecond))
}

// ---- SOCKS5 (RFC 1928 CONNECT + RFC 1929) for the broker's connects ----

const (
	repOK          = 0x00
	repFailure     = 0x01
	repNotAllowed  = 0x02
	repNetUnreach  = 0x03
	repHostUnreach = 0x04
	repRefused     = 0x05
	repTTL         = 0x06
	repCmd         = 0x07
	repAtyp        = 0x08
)

func (h *helper) socksLoop(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go h.socksConn(c)
	}
}

func reply(c net.Conn, code byte) {
	c.Write([]byte{5, code, 0, 1, 0, 0, 0, 0, 0, 0})
}

func (h *helper) socksConn(c net.Conn) {
	c.SetDeadline(time.Now().Add(30 * time.Second))
	buf := make([]byte, 512)
	if _, err := io.ReadFull(c, buf[:2]); err != nil || buf[0] != 5 {
		c.Close()
		return
	}
	methods := buf[:int(buf[1])]
	if _, err := io.ReadFull(c, methods); err != nil || !containsByte(methods, 2) {
		c.Write([]byte{5, 0xff})
		c.Close()
		return
	}
	c.Write([]byte{5, 2})
	// RFC 1929: VER ULEN UNAME PLEN PASSWD
	if _, err := io.ReadFull(c, buf[:2]); err != nil {
		c.Close()
		return
	}
	user := make([]byte, int(buf[1]))
	io.ReadFull(c, user)
	io.ReadFull(c, buf[:1])
	pass := make([]byte, int(buf[0]))
	if _, err := io.ReadFull(c, pass); err != nil ||
		subtle.ConstantTimeCompare(pass, []byte(h.cfg["secret"])) != 1 {
		c.Write([]byte{1, 1})
		c.Close()
		return
	}
	c.Write([]byte{1, 0})
	if _, err := io.ReadFull(c, buf[:4]); err != nil || buf[0] != 5 {
		c.Close()
		return
	}
	if buf[1] != 1 {
		reply(c, repCmd)
		c.Close()
		return
	}
	var host string
	switch buf[3] {
	case 1:
		io.ReadFull(c, buf[:4])
		host = netip.AddrFrom4([4]byte(buf[:4])).String()
	case 4:
		io.ReadFull(c, buf[:16])
		host = netip.AddrFrom16([16]byte(buf[:16])).Unmap().String()
	case 3:
		io.ReadFull(c, buf[:1])
		n := int(buf[0])
		io.ReadFull(c, buf[:n])
		host = string(buf[:n])
	default:
		reply(c, repAtyp)
		c.Close()
		return
	}
	if _, err := io.ReadFull(c, buf[:2]); err != nil {
		c.Close()
		return
	}
	port := binary.BigEndian.Uint16(buf[:2])
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Second)
	defer cancel()
	ip, code, why := h.resolve(ctx, host)
	if code != repOK {
		log.Printf("refused %s:%d: %s", host, port, why)
		reply(c, code)
		c.Close()
		return
	}
	dst := netip.AddrPortFrom(ip, port)
	var out net.Conn
	var err error
	if h.srv != nil {
		out, err = h.srv.Dial(ctx, "tcp", dst.String())
	} else {
		out, err = h.lc.DialTCP(ctx, ip.String(), port)
	}
	if err != nil {
		log.Printf("dial %s:%d (%s): %v", host, port, dst, err)
		reply(c, dialErrorCode(err))
		c.Close()
		return
	}
	reply(c, repOK)
	c.SetDeadline(time.Time{})
	if h.srv == nil {
		// tailscaled's /dial stream has no half-close: a CloseWrite on it makes the daemon close
		// both directions, and the peer's answer would be lost. Keep it open instead.
		relayNoHalfClose(c, out)
		return
	}
	relay(c, out)
}

func containsByte(b []byte, x byte) bool {
	for _, v := range b {
		if v == x {
			return true
		}
	}
	return false
}

func dialErrorCode(err error) byte {
	s := err.Error()
	switch {
	case strings.Contains(s, "refused"):
		return repRefused
	case errors.Is(err, context.DeadlineExceeded) || strings.Contains(s, "timeout") || strings.Contains(s, "timed out"):
		return repTTL
	case strings.Contains(s, "unreachable") || strings.Contains(s, "no route"):
		return repHostUnreach
	}
	return repFailure
}

// resolve maps a MagicDNS short name, a MagicDNS FQDN or a tailnet address to the peer's
// address, from the node's own netmap. No resolver is asked: a name that is not in the netmap is
// unreachable, and an address outside the tailnet is not allowed.
func (h *helper) resolve(ctx context.Context, host string) (netip.Addr, byte, string) {
	h.mu.Lock()
	state := h.state
	h.mu.Unlock()
	if ip, err := netip.ParseAddr(host); err == nil {
		ip = ip.Unmap()
		if !tsaddr.IsTailscaleIP(ip) {
			return ip, repNotAllowed, "not a tailnet address (100.64.0.0/10, fd7a:115c:a1e0::/48)"
		}
		return ip, repOK, ""
	}
	st, err := h.lc.Status(ctx)
	if err != nil {
		return netip.Addr{}, repFailure, fmt.Sprintf("node status: %v", err)
	}
	if st.BackendState != "Running" {
		return netip.Addr{}, repNetUnreach, "node is " + state
	}
	want := strings.TrimSuffix(strings.ToLower(host), ".")
	nodes := []*ipnstate.PeerStatus{st.Self}
	peers := make([]*ipnstate.PeerStatus, 0, len(st.Peer))
	for _, p := range st.Peer {
		peers = append(peers, p)
	}
	sort.Slice(peers, func(i, j int) bool { return peers[i].DNSName < peers[j].DNSName })
	nodes = append(nodes, peers...)
	for _, p := range nodes {
		if p == nil {
			continue
		}
		fqdn := strings.TrimSuffix(strings.ToLower(p.DNSName), ".")
		short, _, _ := strings.Cut(fqdn, ".")
		if fqdn == "" || (want != fqdn && want != short) {
			continue
		}
		for _, ip := range p.TailscaleIPs {
			if ip.Is4() {
				return ip, repOK, ""
			}
		}
		if len(p.TailscaleIPs) > 0 {
			return p.TailscaleIPs[0], repOK, ""
		}
	}
	return netip.Addr{}, repHostUnreach, "no node of that name in the tailnet's netmap"
}

// relay copies both ways and passes half-closes on.
func relay(a, b net.Conn) {
	var wg sync.WaitGroup
	cp := func(dst, src net.Conn) {
		defer wg.Done()
		io.Copy(dst, src)
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		} else {
			dst.Close()
		}
	}
	wg.Add(2)
	go cp(a, b)
	go cp(b, a)
	wg.Wait()
	a.Close()
	b.Close()
}

// relayNoHalfClose is relay for a stream that cannot carry a half-close (tailscaled's /dial):
// the program's half-close is not passed on; the stream ends when the daemon's side does.
func relayNoHalfClose(prog, daemon net.Conn) {
	done := make(chan struct{})
	go func() {
		io.Copy(daemon, prog)
		close(done)
	}()
	io.Copy(prog, daemon)
	if cw, ok := prog.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	daemon.Close()
	prog.Close()
	<-done
}
