// Command netpol-oracle answers, for a described cluster, which probes Kubernetes
// NetworkPolicy (networking.k8s.io/v1) allows. It is the tests' truth, independent of
// loxi-cni's enforcement: every decision comes from upstream code.
//
//   - Policies are decoded strictly (an unknown or misspelt field is an error, never silently
//     dropped), defaulted and validated by the API server's own code
//     (k8s.io/kubernetes/pkg/apis/networking: policyTypes and protocol defaults, and the same
//     validation a create goes through), so a policy the API server would refuse is refused.
//   - Label selectors are evaluated by k8s.io/apimachinery (the selector code of the API server
//     and the controllers).
//   - Everything else (which policies select a pod, peers, ipBlock and except, ports, named
//     ports, endPort, protocols, ingress and egress both having to allow) is the matcher of
//     cyclonus (github.com/mattfenwick/cyclonus/pkg/matcher), the NetworkPolicy simulator that
//     sigs.k8s.io/network-policy-api's policy-assistant is derived from.
//
// Cyclonus's own selector matcher departs from apimachinery in two places (NotIn, and
// matchLabels with an empty value, on a pod that lacks the key), so each non-empty selector
// is handed to cyclonus already evaluated: replaced by an In over synthetic labels naming the
// pods (or namespaces) apimachinery selects. "cyclonusSelectors": true skips that, so tests
// can show the two differ only where those departures apply.
//
// Input (stdin: one or more requests), output (stdout: one line per request) and errors
// (stderr, exit 2): see ../README.md.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"sort"
	"strings"

	"github.com/mattfenwick/cyclonus/pkg/matcher"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/kubernetes/pkg/api/legacyscheme"
	"k8s.io/kubernetes/pkg/apis/networking"
	_ "k8s.io/kubernetes/pkg/apis/networking/install"
	"k8s.io/kubernetes/pkg/apis/networking/validation"
	sigsjson "sigs.k8s.io/json"
)

// Synthetic label keys. '@' is not allowed in a label key, so they never meet a real label.
const (
	podIDKey       = "@oracle/pod"
	namespaceIDKey = "@oracle/namespace"
	// The API server sets this label on every namespace (and keeps it).
	namespaceNameLabel = "kubernetes.io/metadata.name"
)

type Input struct {
	Namespaces map[string]Namespace `json:"namespaces"`
	Pods       []Pod                `json:"pods"`
	Policies   []json.RawMessage    `json:"policies"`
	Probes     []Probe              `json:"probes"`
	// For cross-checking only: let cyclonus evaluate label selectors itself.
	CyclonusSelectors bool `json:"cyclonusSelectors"`
}

type Namespace struct {
	Labels map[string]string `json:"labels"`
}

type Pod struct {
	Namespace string            `json:"namespace"`
	Name      string            `json:"name"`
	Labels    map[string]string `json:"labels"`
	IPs       []string          `json:"ips"`
	Ports     []ContainerPort   `json:"ports"`
	Node      string            `json:"node"`
}

type ContainerPort struct {
	Name     string `json:"name"`
	Port     int    `json:"port"`
	Protocol string `json:"protocol"`
}

// Endpoint is a pod ("namespace/name") or an address outside the cluster.
type Endpoint struct {
	Pod string `json:"pod,omitempty"`
	IP  string `json:"ip,omitempty"`
}

type Probe struct {
	Source      Endpoint           `json:"source"`
	Destination Endpoint           `json:"destination"`
	Port        intstr.IntOrString `json:"port"`
	Protocol    string             `json:"protocol"`
	// 4 or 6; 0 means the family of the one address given, else 4.
	Family int `json:"family"`
}

type Output struct {
	Verdicts []Verdict `json:"verdicts"`
}

type Verdict struct {
	Allowed       bool      `json:"allowed"`
	Ingress       Direction `json:"ingress"`
	Egress        Direction `json:"egress"`
	SourceIP      string    `json:"sourceIP"`
	DestinationIP string    `json:"destinationIP"`
	Port          int       `json:"port"`
	PortName      string    `json:"portName"`
	Protocol      string    `json:"protocol"`
	// A pod talking to itself: upstream's e2e suite leaves this undefined and ignores it.
	Loopback bool `json:"loopback"`
}

// Direction: the policies of one direction (Ingress at the destination, Egress at the source)
// that select the pod, and those of them with a rule admitting the traffic.
type Direction struct {
	Allowed   bool     `json:"allowed"`
	Selecting []string `json:"selecting"`
	Allowing  []string `json:"allowing"`
}

type inputError struct{ msg string }

func (e *inputError) Error() string { return e.msg }

func fail(format string, args ...any) {
	panic(&inputError{fmt.Sprintf(format, args...)})
}

func main() {
	defer func() {
		if r := recover(); r != nil {
			if e, ok := r.(*inputError); ok {
				fmt.Fprintln(os.Stderr, "netpol-oracle:", e.msg)
				os.Exit(2)
			}
			panic(r)
		}
	}()
	// One request after the other, each answered on its own line: a corpus costs one process.
	dec := json.NewDecoder(bufio.NewReader(os.Stdin))
	out := bufio.NewWriter(os.Stdout)
	enc := json.NewEncoder(out)
	for i := 0; ; i++ {
		var raw json.RawMessage
		if err := dec.Decode(&raw); err == io.EOF {
			break
		} else if err != nil {
			fail("request %d: %v", i, err)
		}
		var in Input
		if strictErrs, err := sigsjson.UnmarshalStrict(raw, &in); err != nil || len(strictErrs) > 0 {
			fail("request %d: %v %v", i, err, strictErrs)
		}
		func() {
			defer func() {
				if r := recover(); r != nil {
					if e, ok := r.(*inputError); ok {
						e.msg = fmt.Sprintf("request %d: %s", i, e.msg)
					}
					panic(r)
				}
			}()
			if err := enc.Encode(run(&in)); err != nil {
				fail("writing output: %v", err)
			}
		}()
	}
	if err := out.Flush(); err != nil {
		fail("writing output: %v", err)
	}
}

type cluster struct {
	namespaces map[string]map[string]string // name -> labels, with the name label
	nsIDs      map[string]string
	pods       map[string]*Pod // "namespace/name"
	podIDs     map[string]string
	podOrder   []string
}

func newCluster(in *Input) *cluster {
	c := &cluster{
		namespaces: map[string]map[string]string{},
		nsIDs:      map[string]string{},
		pods:       map[string]*Pod{},
		podIDs:     map[string]string{},
	}
	nsNames := make([]string, 0, len(in.Namespaces))
	for name := range in.Namespaces {
		nsNames = append(nsNames, name)
	}
	sort.Strings(nsNames)
	for i, name := range nsNames {
		nsLabels := map[string]string{}
		for k, v := range in.Namespaces[name].Labels {
			nsLabels[k] = v
		}
		if v, ok := nsLabels[namespaceNameLabel]; ok && v != name {
			fail("namespace %s: label %s=%s: the API server keeps it equal to the name", name, namespaceNameLabel, v)
		}
		nsLabels[namespaceNameLabel] = name
		c.namespaces[name] = nsLabels
		c.nsIDs[name] = fmt.Sprintf("n%d", i)
	}
	for i := range in.Pods {
		p := &in.Pods[i]
		key := p.Namespace + "/" + p.Name
		if _, ok := c.namespaces[p.Namespace]; !ok {
			fail("pod %s: namespace %q not described", key, p.Namespace)
		}
		if _, dup := c.pods[key]; dup {
			fail("pod %s described twice", key)
		}
		for _, ip := range p.IPs {
			if _, err := netip.ParseAddr(ip); err != nil {
				fail("pod %s: address %q: %v", key, ip, err)
			}
		}
		for j, cp := range p.Ports {
			if cp.Protocol != "TCP" && cp.Protocol != "UDP" && cp.Protocol != "SCTP" {
				fail("pod %s: port %d: protocol %q", key, j, cp.Protocol)
			}
		}
		c.pods[key] = p
		c.podIDs[key] = fmt.Sprintf("p%d", i)
		c.podOrder = append(c.podOrder, key)
	}
	return c
}

// admit decodes, defaults and validates a policy the way the API server does on create.
func (c *cluster) admit(raw json.RawMessage, index int) *networkingv1.NetworkPolicy {
	np := &networkingv1.NetworkPolicy{}
	strictErrs, err := sigsjson.UnmarshalStrict(raw, np)
	if err != nil || len(strictErrs) > 0 {
		fail("policy %d: %v %v", index, err, strictErrs)
	}
	if np.APIVersion != "" && np.APIVersion != "networking.k8s.io/v1" {
		fail("policy %d: apiVersion %q", index, np.APIVersion)
	}
	if np.Kind != "" && np.Kind != "NetworkPolicy" {
		fail("policy %d: kind %q", index, np.Kind)
	}
	name := np.Namespace + "/" + np.Name
	legacyscheme.Scheme.Default(np)
	internal := &networking.NetworkPolicy{}
	if err := legacyscheme.Scheme.Convert(np, internal, nil); err != nil {
		fail("policy %s: %v", name, err)
	}
	if errs := validation.ValidateNetworkPolicy(internal, validation.ValidationOptionsForNetworking(internal, nil)); len(errs) > 0 {
		fail("policy %s: invalid: %v", name, errs.ToAggregate())
	}
	if _, ok := c.namespaces[np.Namespace]; !ok {
		fail("policy %s: namespace %q not described", name, np.Namespace)
	}
	return np
}

func selects(sel *metav1.LabelSelector, set map[string]string) bool {
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		fail("selector %v: %v", sel, err)
	}
	return s.Matches(labels.Set(set))
}

// The selector as an In over the synthetic IDs of what apimachinery says it selects. Empty
// selectors stay empty: cyclonus reads "empty" as "all", like the API.
func (c *cluster) podSelectorAsIDs(sel *metav1.LabelSelector) *metav1.LabelSelector {
	if len(sel.MatchLabels) == 0 && len(sel.MatchExpressions) == 0 {
		return &metav1.LabelSelector{}
	}
	ids := []string{}
	for _, key := range c.podOrder {
		if selects(sel, c.pods[key].Labels) {
			ids = append(ids, c.podIDs[key])
		}
	}
	return &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
		{Key: podIDKey, Operator: metav1.LabelSelectorOpIn, Values: ids},
	}}
}

func (c *cluster) namespaceSelectorAsIDs(sel *metav1.LabelSelector) *metav1.LabelSelector {
	if len(sel.MatchLabels) == 0 && len(sel.MatchExpressions) == 0 {
		return &metav1.LabelSelector{}
	}
	names := make([]string, 0, len(c.namespaces))
	for name := range c.namespaces {
		names = append(names, name)
	}
	sort.Strings(names)
	ids := []string{}
	for _, name := range names {
		if selects(sel, c.namespaces[name]) {
			ids = append(ids, c.nsIDs[name])
		}
	}
	return &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
		{Key: namespaceIDKey, Operator: metav1.LabelSelectorOpIn, Values: ids},
	}}
}

func (c *cluster) withSelectorsEvaluated(np *networkingv1.NetworkPolicy) *networkingv1.NetworkPolicy {
	np = np.DeepCopy()
	np.Spec.PodSelector = *c.podSelectorAsIDs(&np.Spec.PodSelector)
	peers := func(list []networkingv1.NetworkPolicyPeer) {
		for i := range list {
			if list[i].PodSelector != nil {
				list[i].PodSelector = c.podSelectorAsIDs(list[i].PodSelector)
			}
			if list[i].NamespaceSelector != nil {
				list[i].NamespaceSelector = c.namespaceSelectorAsIDs(list[i].NamespaceSelector)
			}
		}
	}
	for i := range np.Spec.Ingress {
		peers(np.Spec.Ingress[i].From)
	}
	for i := range np.Spec.Egress {
		peers(np.Spec.Egress[i].To)
	}
	return np
}

func family(ip string) int {
	a := netip.MustParseAddr(ip)
	if a.Is4() || a.Is4In6() {
		return 4
	}
	return 6
}

// peer turns an endpoint into cyclonus's traffic peer, with the address of the given family.
func (c *cluster) peer(e Endpoint, fam int, cyclonusSelectors bool, what string) (*matcher.TrafficPeer, *Pod) {
	if (e.Pod == "") == (e.IP == "") {
		fail("%s: give exactly one of pod and ip", what)
	}
	if e.IP != "" {
		if _, err := netip.ParseAddr(e.IP); err != nil {
			fail("%s: %v", what, err)
		}
		if family(e.IP) != fam {
			fail("%s: %s is not IPv%d", what, e.IP, fam)
		}
		for _, key := range c.podOrder {
			for _, ip := range c.pods[key].IPs {
				if netip.MustParseAddr(ip) == netip.MustParseAddr(e.IP) {
					fail("%s: %s is pod %s's address: name the pod", what, e.IP, key)
				}
			}
		}
		return &matcher.TrafficPeer{IP: e.IP}, nil
	}
	p, ok := c.pods[e.Pod]
	if !ok {
		fail("%s: pod %q not described", what, e.Pod)
	}
	ip := ""
	for _, a := range p.IPs {
		if family(a) == fam {
			ip = a
			break
		}
	}
	if ip == "" {
		fail("%s: pod %s has no IPv%d address", what, e.Pod, fam)
	}
	internal := &matcher.InternalPeer{Namespace: p.Namespace}
	if cyclonusSelectors {
		internal.PodLabels = p.Labels
		internal.NamespaceLabels = c.namespaces[p.Namespace]
	} else {
		internal.PodLabels = map[string]string{podIDKey: c.podIDs[e.Pod]}
		internal.NamespaceLabels = map[string]string{namespaceIDKey: c.nsIDs[p.Namespace]}
	}
	return &matcher.TrafficPeer{Internal: internal, IP: ip}, p
}

// resolvePort gives the probe's port number and the name the destination pod gives it. A
// named port is a container port of the destination pod, of the probe's protocol.
func resolvePort(probe *Probe, dst *Pod, what string) (int, string) {
	if probe.Port.Type == intstr.String {
		if dst == nil {
			fail("%s: named port %q needs a pod destination", what, probe.Port.StrVal)
		}
		for _, cp := range dst.Ports {
			if cp.Name == probe.Port.StrVal && cp.Protocol == probe.Protocol {
				return cp.Port, cp.Name
			}
		}
		fail("%s: pod %s/%s has no %s port named %q", what, dst.Namespace, dst.Name, probe.Protocol, probe.Port.StrVal)
	}
	port := int(probe.Port.IntVal)
	if port < 1 || port > 65535 {
		fail("%s: port %d", what, port)
	}
	name := ""
	if dst != nil {
		for _, cp := range dst.Ports {
			if cp.Port == port && cp.Protocol == probe.Protocol && cp.Name != "" {
				if name != "" && name != cp.Name {
					fail("%s: pod %s/%s names %s port %d both %q and %q", what, dst.Namespace, dst.Name, probe.Protocol, port, name, cp.Name)
				}
				name = cp.Name
			}
		}
	}
	return port, name
}

func policyNames(targets []*matcher.Target) []string {
	seen := map[string]bool{}
	names := []string{}
	for _, t := range targets {
		for _, np := range t.SourceRules {
			n := np.Namespace + "/" + np.Name
			if !seen[n] {
				seen[n] = true
				names = append(names, n)
			}
		}
	}
	sort.Strings(names)
	return names
}

func run(in *Input) *Output {
	c := newCluster(in)
	var admitted []*networkingv1.NetworkPolicy
	seen := map[string]bool{}
	for i, raw := range in.Policies {
		np := c.admit(raw, i)
		key := np.Namespace + "/" + np.Name
		if seen[key] {
			fail("policy %s given twice", key)
		}
		seen[key] = true
		if !in.CyclonusSelectors {
			np = c.withSelectorsEvaluated(np)
		}
		admitted = append(admitted, np)
	}
	all := matcher.BuildNetworkPolicies(false, admitted)
	single := make([]*matcher.Policy, len(admitted))
	for i, np := range admitted {
		single[i] = matcher.BuildNetworkPolicies(false, []*networkingv1.NetworkPolicy{np})
	}

	out := &Output{Verdicts: []Verdict{}}
	for i := range in.Probes {
		probe := &in.Probes[i]
		what := fmt.Sprintf("probe %d", i)
		if probe.Protocol != "TCP" && probe.Protocol != "UDP" && probe.Protocol != "SCTP" {
			fail("%s: protocol %q", what, probe.Protocol)
		}
		fam := probe.Family
		if fam == 0 {
			fam = 4
			if probe.Source.IP != "" {
				fam = family(probe.Source.IP)
			} else if probe.Destination.IP != "" {
				fam = family(probe.Destination.IP)
			}
		}
		if fam != 4 && fam != 6 {
			fail("%s: family %d", what, fam)
		}
		src, _ := c.peer(probe.Source, fam, in.CyclonusSelectors, what+" source")
		dst, dstPod := c.peer(probe.Destination, fam, in.CyclonusSelectors, what+" destination")
		if src.Internal == nil && dst.Internal == nil {
			fail("%s: source or destination must be a pod", what)
		}
		port, portName := resolvePort(probe, dstPod, what)
		traffic := &matcher.Traffic{
			Source:           src,
			Destination:      dst,
			ResolvedPort:     port,
			ResolvedPortName: portName,
			Protocol:         corev1.Protocol(probe.Protocol),
		}
		result := all.IsTrafficAllowed(traffic)
		v := Verdict{
			Allowed:       result.IsAllowed(),
			Ingress:       Direction{Allowed: result.Ingress.IsAllowed(), Selecting: []string{}, Allowing: []string{}},
			Egress:        Direction{Allowed: result.Egress.IsAllowed(), Selecting: []string{}, Allowing: []string{}},
			SourceIP:      src.IP,
			DestinationIP: dst.IP,
			Port:          port,
			PortName:      portName,
			Protocol:      probe.Protocol,
			Loopback:      probe.Source.Pod != "" && probe.Source.Pod == probe.Destination.Pod,
		}
		// Per policy, for the explanation: cyclonus merges policies with equal selectors into
		// one target, which hides which of them allowed.
		for _, p := range single {
			r := p.IsTrafficAllowed(traffic)
			explain(&v.Ingress, r.Ingress)
			explain(&v.Egress, r.Egress)
		}
		check(what+" ingress", &v.Ingress, result.Ingress)
		check(what+" egress", &v.Egress, result.Egress)
		sort.Strings(v.Ingress.Selecting)
		sort.Strings(v.Ingress.Allowing)
		sort.Strings(v.Egress.Selecting)
		sort.Strings(v.Egress.Allowing)
		out.Verdicts = append(out.Verdicts, v)
	}
	return out
}

func explain(d *Direction, r *matcher.DirectionResult) {
	d.Selecting = append(d.Selecting, policyNames(r.AllowingTargets)...)
	d.Selecting = append(d.Selecting, policyNames(r.DenyingTargets)...)
	d.Allowing = append(d.Allowing, policyNames(r.AllowingTargets)...)
}

// check that the per-policy explanation agrees with cyclonus's verdict on all of them: the same
// policies select the pod, and the direction is allowed when none does or one of them allows.
func check(what string, d *Direction, r *matcher.DirectionResult) {
	all := append(policyNames(r.AllowingTargets), policyNames(r.DenyingTargets)...)
	sort.Strings(all)
	fromPolicies := len(d.Selecting) == 0 || len(d.Allowing) > 0
	if fromPolicies != d.Allowed || strings.Join(all, ",") != strings.Join(sortedCopy(d.Selecting), ",") {
		panic(fmt.Sprintf("%s: explanation %+v disagrees with the verdict %+v", what, d, r))
	}
}

func sortedCopy(s []string) []string {
	out := append([]string(nil), s...)
	sort.Strings(out)
	return out
}
