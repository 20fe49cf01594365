"""The address policy for user URLs: what may be fetched, in every notation an attacker might use."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from multipass.ssrf import (
    AddressPolicy,
    Refused,
    classify,
    parse_loose_ipv4,
    parse_url,
    redirect_target,
)

POLICY = AddressPolicy()


def refused(url: str, policy: AddressPolicy = POLICY) -> str:
    target = parse_url(url)
    with pytest.raises(Refused) as caught:
        address = target.literal_ip
        assert address is not None, "test URLs name addresses"
        policy.check_address(address)
    return str(caught.value)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1/", "loopback"),
        ("http://127.8.9.10:8080/x", "loopback"),
        ("http://10.1.2.3/", "private"),
        ("http://172.16.0.1/", "private"),
        ("http://192.168.1.1/", "private"),
        ("http://100.64.0.1/", "carrier-grade NAT"),
        ("http://169.254.169.254/latest/meta-data/", "metadata"),
        ("http://169.254.1.1/", "link-local"),
        ("http://0.0.0.0/", "unspecified"),
        ("http://224.0.0.1/", "multicast"),
        ("http://240.0.0.1/", "reserved"),
        ("http://[::1]/", "loopback"),
        ("http://[::]/", "unspecified"),
        ("http://[fe80::1]/", "link-local"),
        ("http://[fd00:ec2::254]/", "metadata"),
        ("http://[fc00::5]/", "private"),
        ("http://[::ffff:127.0.0.1]/", "IPv4-mapped"),
        ("http://[::ffff:7f00:1]/", "IPv4-mapped"),
        ("http://[::ffff:8.8.8.8]/", "IPv4-mapped"),
        ("http://[2002:7f00:1::]/", "embedding 127.0.0.1"),
        ("http://[64:ff9b::a00:1]/", "embedding 10.0.0.1"),
        ("http://[::127.0.0.1]/", "embedding 127.0.0.1"),
    ],
)
def test_non_public_addresses_are_refused(url, reason):
    assert reason in refused(url)


@pytest.mark.parametrize(
    "host",
    ["2130706433", "0x7f000001", "0177.0.0.1", "0x7f.1", "127.1", "017700000001", "127.0.0.1.", "0x7F.0.0.1"],
)
def test_decimal_octal_hex_and_short_ipv4_literals_are_recognised(host):
    target = parse_url(f"http://{host}/")
    assert target.literal_ip == ipaddress.IPv4Address("127.0.0.1")
    with pytest.raises(Refused, match="loopback"):
        POLICY.check_address(target.literal_ip)


def test_decimal_metadata_address_is_refused():
    target = parse_url("http://2852039166/")  # 169.254.169.254
    assert str(target.literal_ip) == "169.254.169.254"
    with pytest.raises(Refused, match="metadata"):
        POLICY.check_address(target.literal_ip)


def test_public_addresses_pass():
    for address in ("8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "2001:4860:4860::8888"):
        assert classify(ipaddress.ip_address(address)) is None
        POLICY.check_address(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://example.com/x", "scheme"),
        ("file:///etc/passwd", "scheme"),
        ("gopher://example.com/", "scheme"),
        ("http://user:pw@example.com/", "credentials"),
        ("http:///nohost", "no host"),
        ("http://example.com:99999/", "not a valid URL"),
        ("http://exa mple.com/", "whitespace"),
        ("http://example.com\\@evil.com/", "backslashes"),
        ("http://[fe80::1%25eth0]/", "zone"),
        ("http://%31%32%37.0.0.1/", "percent-encoded host name"),
        ("http://0x100.0.0.1/", "out-of-range"),
        ("http://09.1.1.1/", "malformed octal"),
        ("", "empty"),
    ],
)
def test_malformed_urls_are_refused(url, reason):
    with pytest.raises(Refused, match=reason):
        parse_url(url)


def test_parse_url_splits_host_port_and_path():
    target = parse_url("https://Example.COM:8443/a/b?x=1#frag")
    assert (target.scheme, target.host, target.port, target.path) == (
        "https",
        "example.com",
        8443,
        "/a/b?x=1",
    )
    assert target.host_header == "example.com:8443"
    assert parse_url("http://[2001:db8::1]/").host_header == "[2001:db8::1]"
    assert parse_url("http://example.com").path == "/"


def test_resolved_addresses_must_all_pass():
    target = parse_url("http://images.example.com/cat.png")
    good = ipaddress.ip_address("93.184.216.34")
    assert POLICY.check_resolved(target, [good, good]) == [good]
    with pytest.raises(Refused, match=r"images.example.com resolves to 10.0.0.7, a private address"):
        POLICY.check_resolved(target, [good, ipaddress.ip_address("10.0.0.7")])
    with pytest.raises(Refused, match="does not resolve"):
        POLICY.check_resolved(target, [])


def test_allow_list_by_network_and_by_host():
    policy = AddressPolicy(
        allow_hosts=frozenset({"minio.internal"}),
        allow_networks=(ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("10.0.0.0/8")),
    )
    policy.check_address(ipaddress.ip_address("127.0.0.1"))
    policy.check_address(ipaddress.ip_address("::ffff:127.0.0.1"))  # mapped form of an allowed address
    policy.check_address(ipaddress.ip_address("10.9.9.9"))
    with pytest.raises(Refused):
        policy.check_address(ipaddress.ip_address("127.0.0.2"))
    policy.check_resolved(parse_url("http://minio.internal/x"), [ipaddress.ip_address("192.168.5.5")])
    with pytest.raises(Refused):
        policy.check_resolved(parse_url("http://other.internal/x"), [ipaddress.ip_address("192.168.5.5")])


def test_metadata_needs_an_exact_allow_entry():
    broad = AddressPolicy(
        allow_networks=(ipaddress.ip_network("169.254.0.0/16"),), allow_hosts=frozenset({"meta"})
    )
    with pytest.raises(Refused, match="metadata"):
        broad.check_address(ipaddress.ip_address("169.254.169.254"))
    with pytest.raises(Refused, match="metadata"):
        broad.check_resolved(parse_url("http://meta/"), [ipaddress.ip_address("169.254.169.254")])
    exact = AddressPolicy(allow_networks=(ipaddress.ip_network("169.254.169.254/32"),))
    exact.check_address(ipaddress.ip_address("169.254.169.254"))


def test_redirects_are_resolved_against_the_current_url_and_checked():
    current = parse_url("https://cdn.example.com/a/b.png")
    assert redirect_target(current, "/c.png").url == "https://cdn.example.com/c.png"
    assert redirect_target(current, "http://127.0.0.1/x").literal_ip == ipaddress.IPv4Address("127.0.0.1")
    with pytest.raises(Refused, match="scheme"):
        redirect_target(current, "file:///etc/passwd")
    with pytest.raises(Refused, match="Location"):
        redirect_target(current, "")


@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_every_decimal_ipv4_literal_is_read_like_inet_aton(number):
    assert parse_loose_ipv4(str(number)) == ipaddress.IPv4Address(number)
    assert parse_loose_ipv4(hex(number)) == ipaddress.IPv4Address(number)


@given(st.ip_addresses(v=4))
def test_mapped_ipv4_is_never_allowed_by_default(address):
    mapped = ipaddress.IPv6Address(f"::ffff:{address}")
    with pytest.raises(Refused):
        POLICY.check_address(mapped)
