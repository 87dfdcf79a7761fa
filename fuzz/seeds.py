#!/usr/bin/env python3
"""Writes the seed corpora of the codec targets: one valid client packet of each type per
version (and a few combinations), in the input layout of `tern_fuzz::fuzz_codec`:

    byte 0  config: bits 0-2 max packet size (index into MAX_SIZES, 0 = unlimited),
            bits 3-4 CONNECT variant, bit 5 topic alias maximum 8, bit 7 no CONNECT prefix
    byte 1  piece size - 1 for the chunked pass
    rest    the bytes after the CONNECT (or the whole stream with bit 7)

Run from the repository root: python3 fuzz/seeds.py. The other targets take structured input
(the `arbitrary` crate); their seeds are minimized corpora from fuzzing runs (docs/fuzzing.md).
"""

import os


def varint(n):
    out = bytearray()
    while True:
        byte = n % 128
        n //= 128
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def packet(first, body):
    return bytes([first]) + varint(len(body)) + body


def s(text):
    data = text.encode() if isinstance(text, str) else text
    return len(data).to_bytes(2, "big") + data


def props(*items):
    body = b"".join(items)
    return varint(len(body)) + body


def u16(n):
    return n.to_bytes(2, "big")


def u32(n):
    return n.to_bytes(4, "big")


V311 = {
    "publish_qos0": packet(0x30, s("a/b") + b"hello"),
    "publish_qos1_retain": packet(0x33, s("sensors/room-1/temperature") + u16(1) + b"21.5"),
    "publish_qos2_dup": packet(0x3C, s("a") + u16(65535) + bytes(range(200))),
    "puback": packet(0x40, u16(1)),
    "pubrec": packet(0x50, u16(2)),
    "pubrel": packet(0x62, u16(2)),
    "pubcomp": packet(0x70, u16(2)),
    "subscribe": packet(0x82, u16(9) + s("a/+/c") + b"\x01" + s("#") + b"\x02" + s("$share/g/x") + b"\x00"),
    "unsubscribe": packet(0xA2, u16(10) + s("a/+/c") + s("#")),
    "pingreq": packet(0xC0, b""),
    "disconnect": packet(0xE0, b""),
}
V311["qos2_flow"] = V311["publish_qos2_dup"] + V311["pubrel"] + V311["pingreq"] + V311["disconnect"]

V5 = {
    "publish_qos0": packet(0x30, s("a/b") + props() + b"hello"),
    "publish_properties": packet(
        0x33,
        s("a/b")
        + u16(7)
        + props(
            b"\x01\x01",  # payload format indicator: UTF-8
            b"\x02" + u32(60),  # message expiry
            b"\x03" + s("text/plain"),  # content type
            b"\x08" + s("re/ply"),  # response topic
            b"\x09" + s(b"\x00\x01"),  # correlation data
            b"\x26" + s("k") + s("v"),  # user property
            b"\x26" + s("k") + s("v2"),
        )
        + b"{}",
    ),
    "publish_alias": packet(0x30, s("long/topic") + props(b"\x23" + u16(2)) + b"x")
    + packet(0x30, s("") + props(b"\x23" + u16(2)) + b"y"),
    "publish_qos2": packet(0x34, s("a") + u16(3) + props() + bytes(range(130))),
    "puback_short": packet(0x40, u16(1)),
    "puback_reason": packet(0x40, u16(1) + b"\x10" + props(b"\x1f" + s("no subscribers"))),
    "pubrec_reason": packet(0x50, u16(2) + b"\x97" + props()),
    "pubrel": packet(0x62, u16(2)),
    "pubcomp_not_found": packet(0x70, u16(2) + b"\x92"),
    "subscribe_options": packet(
        0x82,
        u16(9) + props(b"\x0b\x05", b"\x26" + s("a") + s("b")) + s("a/#") + b"\x2e" + s("$share/g/x") + b"\x01",
    ),
    "unsubscribe": packet(0xA2, u16(10) + props(b"\x26" + s("a") + s("b")) + s("a/#")),
    "pingreq": packet(0xC0, b""),
    "disconnect_short": packet(0xE0, b""),
    "disconnect_will": packet(0xE0, b"\x04" + props(b"\x11" + u32(30), b"\x1f" + s("bye"))),
    "auth": packet(0xF0, b"\x19" + props(b"\x15" + s("SCRAM-SHA-256"), b"\x16" + s("c=biws,r=abc"))),
}


def connect_v5_raw():
    body = s("MQTT") + b"\x05\xc2" + u16(30)
    body += props(b"\x11" + u32(120), b"\x21" + u16(10), b"\x27" + u32(1024), b"\x22" + u16(4))
    body += s("raw5") + s("user") + s("pw")
    return packet(0x10, body)


def connect_311_raw():
    return packet(0x10, s("MQTT") + b"\x04\x02" + u16(60) + s("raw"))


def write(target, name, data):
    path = os.path.join("fuzz", "corpus", target)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, name), "wb") as f:
        f.write(data)
    assert len(data) < 4096, name


def main():
    for name, data in V311.items():
        write("codec_v311", name, b"\x00\xff" + data)
    # With a size limit (64 bytes), the persistent CONNECT with a will, and small pieces.
    write("codec_v311", "limit64_will_pieces", b"\x0c\x02" + V311["publish_qos1_retain"] + V311["subscribe"])
    # 3.1 ("MQIsdp") CONNECT.
    write("codec_v311", "mqisdp", b"\x10\x00" + V311["publish_qos0"] + V311["pingreq"])
    write("codec_v311", "raw_stream", b"\x80\x04" + connect_311_raw() + V311["publish_qos0"])
    for name, data in V5.items():
        write("codec_v5", name, b"\x20\xff" + data)
    # The client allows 64-byte packets and 2 aliases (CONNECT variant 1); pieces of 3 bytes.
    write("codec_v5", "client_limits_pieces", b"\x28\x02" + V5["publish_alias"] + V5["publish_properties"])
    write("codec_v5", "auth_connect", b"\x18\x07" + V5["auth"] + V5["disconnect_short"])
    write("codec_v5", "raw_stream", b"\xa0\x05" + connect_v5_raw() + V5["publish_qos2"] + V5["pubrel"])


if __name__ == "__main__":
    main()
