//go:build tools

// The real tailscaled and tailscale CLI are built from the same tailscale.com module version
// for the attach-mode test (an entry with localapi_socket).
package tools

import (
	_ "tailscale.com/cmd/tailscale"
	_ "tailscale.com/cmd/tailscaled"
)
