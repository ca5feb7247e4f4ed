"""SOCKS5 proxy through which admins reach internal pages from their own browser.

`server` holds the proxy, `acl` the destination allow list, `pac` the proxy
auto-config file that the web app serves, and `ssh_config` the OpenSSH block
for a DynamicForward tunnel.
"""
