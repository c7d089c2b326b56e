"""The image libraries: HTTP downloader, outbound URL rules, checksums, header rules, the qemu-img
runner, image inspection and metalink. Pure Python: no Django model is imported here, so the
storage worker and the host agents use them alike."""
