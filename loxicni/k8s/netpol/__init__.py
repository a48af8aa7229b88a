"""NetworkPolicy in Kubernetes mode: the API objects as a typed model (``model``), label
selectors (``selector``), their compilation into the node's packet filter program
(``compiler``, pure), and the controller that watches the API and keeps the kernel's table in
step (``controller``). The nftables encoding itself lives in ``loxicni.net.policy_table``."""
