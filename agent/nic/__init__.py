"""NIC multi-queue tuning: keep each managed interface at the queue count its instance type
needs (issue 6), spread the queues' interrupts over CPUs and match transmit steering to them.

Map of the package: `instance_types` (the table and its lookup), `ethtool` (SIOCETHTOOL
channels), `interfaces` (which NICs are ours), `affinity` (IRQ affinity and XPS),
`metadata` (instance type from the cloud metadata service), `manager` (plan / verify /
apply for one pass), `component` (the daemon plug-in), `cli` (`egs-agent nic`).
"""
