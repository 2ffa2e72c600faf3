// Command hollow-node runs one kubemark hollow kubelet (k8s.io/kubernetes/pkg/kubemark: a real kubelet over a
// fake container runtime) that stays on one loopback address.
//
// kubemark's own command (`kubemark --morph=kubelet`) cannot: its kubelet listens on 0.0.0.0 and its health
// server on the fixed 127.0.0.1:10248 (two nodes on one machine collide). This command binds the kubelet to
// its node's address and turns the read-only and health ports off.
//
// The node is named by its loopback address (--name 127.0.1.1): a kubelet refuses a loopback --node-ip, and a
// node name that is no IP address is looked up in DNS, then replaced by the default route's interface
// address, which the API server would dial for logs and exec. A name that is an IP address is used as the
// node's InternalIP as it stands.
//
// Each pod gets a loopback address of its own (podnetwork.go). With --probes the kubelet runs the pods'
// startup, readiness and liveness probes against those addresses, as a kubelet does, so a pod is Ready only
// while something answers there; without it every container is Ready at once (kubemark's fake prober).
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	clientset "k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	remote "k8s.io/cri-client/pkg"
	fakeremote "k8s.io/cri-client/pkg/fake"
	"k8s.io/klog/v2"
	cadvisortest "k8s.io/kubernetes/pkg/kubelet/cadvisor/testing"
	"k8s.io/kubernetes/pkg/kubelet/cm"
	"k8s.io/kubernetes/pkg/kubemark"
)

type options struct {
	kubeconfig string
	name       string
	port       int
	labels     string
	maxPods    int
	probes     bool
}

func parseLabels(text string) (map[string]string, error) {
	labels := map[string]string{}
	if text == "" {
		return labels, nil
	}
	for _, pair := range strings.Split(text, ",") {
		key, value, found := strings.Cut(pair, "=")
		if !found {
			return nil, fmt.Errorf("--labels: %q is not key=value", pair)
		}
		labels[key] = value
	}
	return labels, nil
}

func run(ctx context.Context, opts options) error {
	labels, err := parseLabels(opts.labels)
	if err != nil {
		return err
	}
	clientConfig, err := clientcmd.BuildConfigFromFlags("", opts.kubeconfig)
	if err != nil {
		return fmt.Errorf("--kubeconfig %s: %w", opts.kubeconfig, err)
	}
	clientConfig.UserAgent = "hollow-kubelet"
	client, err := clientset.NewForConfig(clientConfig)
	if err != nil {
		return err
	}

	flags, config := kubemark.GetHollowKubeletConfig(&kubemark.HollowKubeletOptions{
		NodeName:    opts.name,
		KubeletPort: opts.port,
		MaxPods:     opts.maxPods,
		NodeLabels:  labels,
	})
	config.Address = opts.name
	// Everything it writes stays in its own temp root dir, not in /var/lib/kubelet and the like, which every
	// hollow node on the machine (another test run's too) would share.
	flags.CertDirectory = filepath.Join(flags.RootDirectory, "pki")
	config.VolumePluginDir = filepath.Join(flags.RootDirectory, "volume-plugins")
	config.ReadOnlyPort = 0
	config.HealthzPort = 0

	// Node heartbeats must not wait behind other requests, nor outlive a lease (as kubemark sets them up).
	heartbeatConfig := *clientConfig
	heartbeatConfig.Timeout = min(config.NodeStatusUpdateFrequency.Duration,
		time.Duration(config.NodeLeaseDurationSeconds)*time.Second)
	heartbeatConfig.QPS = -1
	heartbeatClient, err := clientset.NewForConfig(&heartbeatConfig)
	if err != nil {
		return err
	}

	endpoint, err := fakeremote.GenerateEndpoint()
	if err != nil {
		return fmt.Errorf("fake runtime endpoint: %w", err)
	}
	fakeRuntime := newPodNetwork()
	if err := fakeRuntime.serve(ctx, endpoint); err != nil {
		return fmt.Errorf("fake runtime: %w", err)
	}
	runtimeService, err := remote.NewRemoteRuntimeServiceBuilder().WithEndpoint(endpoint).
		WithConnectionTimeout(15 * time.Second).Build(ctx)
	if err != nil {
		return fmt.Errorf("fake runtime client: %w", err)
	}

	kubelet := kubemark.NewHollowKubelet(flags, config, client, heartbeatClient,
		&cadvisortest.Fake{NodeName: opts.name}, fakeRuntime.ImageService, runtimeService,
		cm.NewStubContainerManager())
	if opts.probes {
		kubelet.KubeletDeps.ProbeManager = nil // the kubelet then builds its own, real prober
	}
	go kubelet.Run(ctx)
	<-ctx.Done()
	return nil
}

func main() {
	var opts options
	flag.StringVar(&opts.kubeconfig, "kubeconfig", "", "kubeconfig of the node's identity (system:node:NAME)")
	flag.StringVar(&opts.name, "name", "", "node name: the loopback address it listens on and reports")
	flag.IntVar(&opts.port, "port", 0, "kubelet port")
	flag.StringVar(&opts.labels, "labels", "", "node labels, key=value,...")
	flag.IntVar(&opts.maxPods, "max-pods", 110, "pods the node accepts")
	flag.BoolVar(&opts.probes, "probes", false, "run the pods' probes against their addresses (else Ready at once)")
	klog.InitFlags(nil)
	flag.Parse()
	if ip := net.ParseIP(opts.name); ip == nil || !ip.IsLoopback() || opts.kubeconfig == "" || opts.port == 0 {
		fmt.Fprintln(os.Stderr, "hollow-node: --kubeconfig, --port and --name (a loopback address) are required")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, opts); err != nil {
		fmt.Fprintf(os.Stderr, "hollow-node: %v\n", err)
		os.Exit(1)
	}
}
