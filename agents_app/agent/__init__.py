"""What runs on a KVM host, inside `manage.py run_agent`: libvirt (`virt`), VM work on the host
(`vms`), template copies onto primary pools (`pool_copies`), direct downloads into pools
(`direct_download`), the host's trust store (`trust`), the heartbeat (`heartbeat`) and the tasks
of the host's own queue `host.<name>` (`tasks`).

It never imports versions_app (an import-linter contract holds it): a host does what the
management side decided, and never decides which version a VM runs.
"""
