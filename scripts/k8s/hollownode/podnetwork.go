package main

import (
	"context"
	"fmt"
	"math/big"
	"net"
	"sync"

	"google.golang.org/grpc"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	fakeremote "k8s.io/cri-client/pkg/fake"
	"k8s.io/cri-client/pkg/util"
)

// podNetwork is kubemark's fake container runtime with one change: each pod sandbox gets an address of its
// own from the node's pod range (127.64.N.0/24, loopback) instead of the fake's 192.168.192.168 for every
// pod. A test can then serve a pod's ports on its address (an engine's /health and /metrics), the kubelet's
// probes and the operator's scrapes reach it there, and nothing ever dials outside 127.0.0.0/8.
type podNetwork struct {
	*fakeremote.RemoteRuntime
	mu      sync.Mutex
	podCIDR *net.IPNet
	byID    map[string]string // sandbox id -> address
	inUse   map[string]bool   // address -> taken
}

func newPodNetwork() *podNetwork {
	return &podNetwork{RemoteRuntime: fakeremote.NewFakeRemoteRuntime(), byID: map[string]string{}, inUse: map[string]bool{}}
}

// serve answers the CRI on endpoint (a unix socket) until ctx ends, as the fake's own Start would.
func (n *podNetwork) serve(ctx context.Context, endpoint string) error {
	listener, err := util.CreateListener(endpoint)
	if err != nil {
		return fmt.Errorf("listen on %q: %w", endpoint, err)
	}
	server := grpc.NewServer()
	runtimeapi.RegisterRuntimeServiceServer(server, n)
	runtimeapi.RegisterImageServiceServer(server, n)
	n.RuntimeService.FakeStatus = &runtimeapi.RuntimeStatus{Conditions: []*runtimeapi.RuntimeCondition{
		{Type: runtimeapi.RuntimeReady, Status: true},
		{Type: runtimeapi.NetworkReady, Status: true},
	}}
	go func() {
		<-ctx.Done()
		server.Stop()
	}()
	go func() { _ = server.Serve(listener) }()
	return nil
}

// UpdateRuntimeConfig is how the kubelet hands the runtime its node's pod range.
func (n *podNetwork) UpdateRuntimeConfig(
	ctx context.Context, req *runtimeapi.UpdateRuntimeConfigRequest,
) (*runtimeapi.UpdateRuntimeConfigResponse, error) {
	if cidr := req.GetRuntimeConfig().GetNetworkConfig().GetPodCidr(); cidr != "" {
		_, network, err := net.ParseCIDR(cidr)
		if err != nil || !network.IP.IsLoopback() {
			return nil, fmt.Errorf("pod range %q: want a range in 127.0.0.0/8", cidr)
		}
		n.mu.Lock()
		n.podCIDR = network
		n.mu.Unlock()
	}
	return n.RemoteRuntime.UpdateRuntimeConfig(ctx, req)
}

func (n *podNetwork) RunPodSandbox(
	ctx context.Context, req *runtimeapi.RunPodSandboxRequest,
) (*runtimeapi.RunPodSandboxResponse, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.podCIDR == nil {
		return nil, fmt.Errorf("no pod range yet: the kubelet has not passed the node's spec.podCIDR on")
	}
	resp, err := n.RemoteRuntime.RunPodSandbox(ctx, req)
	if err != nil {
		return nil, err
	}
	id := resp.GetPodSandboxId()
	address, found := n.byID[id]
	if !found {
		if address, err = n.freeAddress(); err != nil {
			return nil, err
		}
		n.byID[id] = address
		n.inUse[address] = true
	}
	fake := n.RuntimeService
	fake.Lock()
	defer fake.Unlock()
	fake.Sandboxes[id].Network.Ip = address
	return resp, nil
}

func (n *podNetwork) RemovePodSandbox(
	ctx context.Context, req *runtimeapi.RemovePodSandboxRequest,
) (*runtimeapi.RemovePodSandboxResponse, error) {
	resp, err := n.RemoteRuntime.RemovePodSandbox(ctx, req)
	if err != nil {
		return nil, err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if address, found := n.byID[req.GetPodSandboxId()]; found {
		delete(n.byID, req.GetPodSandboxId())
		delete(n.inUse, address)
	}
	return resp, nil
}

// freeAddress is the lowest host address of the pod range that no sandbox holds (.1 up: the range is the
// node's alone, with no gateway or bridge to leave room for).
func (n *podNetwork) freeAddress() (string, error) {
	base := new(big.Int).SetBytes(n.podCIDR.IP.To4())
	ones, bits := n.podCIDR.Mask.Size()
	hosts := int64(1)<<(bits-ones) - 1 // the last is the broadcast address
	for offset := int64(1); offset < hosts; offset++ {
		address := net.IP(new(big.Int).Add(base, big.NewInt(offset)).FillBytes(make([]byte, 4))).String()
		if !n.inUse[address] {
			return address, nil
		}
	}
	return "", fmt.Errorf("pod range %s is full", n.podCIDR)
}
