#!/usr/bin/python3
"""A device written against ThingsBoard's documented OTA flow, the way its
SDKs (tb-mqtt-client's get_firmware_update, the Arduino SDK's
OTA_Firmware_Update) and ThingsBoard's own firmware example client do it:

  1. report current_fw_title / current_fw_version as telemetry and request
     the shared keys fw_checksum, fw_checksum_algorithm, fw_size, fw_title,
     fw_version on v1/devices/me/attributes/request/{id};
  2. subscribe v2/fw/response/+ (which, as with ThingsBoard, matches no
     chunk topic: the server sends the chunks anyway);
  3. when fw_version differs, report fw_state DOWNLOADING and request chunks
     on v2/fw/request/{requestId}/chunk/{n}, the payload being the chunk
     size as text (empty for the whole file), until fw_size bytes arrived;
  4. report DOWNLOADED, verify the checksum as the SDK does (CRC32 and
     murmur3 compared in reversed byte order), report VERIFIED, UPDATING,
     then the new current_fw_* with fw_state UPDATED.

It knows nothing of thingline. Usage:
  tb_device.py HOST PORT CA CERT KEY TITLE VERSION CHUNK_SIZE TIMEOUT_S
It prints "UPDATED <version>" and exits 0, or exits non-zero.
"""
import json
import ssl
import sys
import threading
import zlib
from hashlib import md5, sha256, sha384, sha512

import paho.mqtt.client as mqtt

host, port, ca, cert, key, title, version, chunk_size, timeout = sys.argv[1:10]
port, chunk_size, timeout = int(port), int(chunk_size), float(timeout)

REQUIRED_SHARED_KEYS = "fw_checksum,fw_checksum_algorithm,fw_size,fw_title,fw_version"
state = {"current": {"current_fw_title": title, "current_fw_version": version},
         "info": {}, "data": b"", "chunk": 0, "fw_request_id": 0, "attr_request_id": 0}
done = threading.Event()
result = {"code": 3, "text": "timed out"}


def finish(code, text):
    result["code"], result["text"] = code, text
    done.set()


def reversed_hex(value, width):
    # The SDK's reversal: big-endian hex, then its bytes in reverse order.
    h = format(value, "0%dx" % width)
    return "".join(reversed([h[i:i + 2] for i in range(0, len(h), 2)]))


def checksum(alg, data):
    alg = alg.lower()
    if alg == "sha256":
        return sha256(data).hexdigest()
    if alg == "sha384":
        return sha384(data).hexdigest()
    if alg == "sha512":
        return sha512(data).hexdigest()
    if alg == "md5":
        return md5(data).hexdigest()
    if alg == "crc32":
        return reversed_hex(zlib.crc32(data) & 0xffffffff, 8)
    return None


def telemetry(client, values):
    client.publish("v1/devices/me/telemetry", json.dumps(values), qos=1)


def request_info(client):
    state["attr_request_id"] += 1
    client.publish("v1/devices/me/attributes/request/%d" % state["attr_request_id"],
                   json.dumps({"sharedKeys": REQUIRED_SHARED_KEYS}), qos=1)


def request_chunk(client):
    size = state["info"].get("fw_size", 0)
    payload = "" if not chunk_size or chunk_size > size else str(chunk_size)
    client.publish("v2/fw/request/%d/chunk/%d" % (state["fw_request_id"], state["chunk"]), payload, qos=1)


def on_connect(client, userdata, flags, rc, *extra):
    if rc != 0:
        finish(4, "connect refused: %s" % rc)
        return
    client.subscribe("v1/devices/me/attributes/response/+", qos=1)
    client.subscribe("v1/devices/me/attributes", qos=1)
    client.subscribe("v2/fw/response/+", qos=1)
    telemetry(client, state["current"])
    request_info(client)


def on_message(client, userdata, msg):
    topic = msg.topic
    if topic.startswith("v1/devices/me/attributes"):
        info = json.loads(msg.payload)
        if "/response/" in topic:
            info = info.get("shared", {})
        if info.get("fw_version") is None:
            return
        if info.get("fw_version") == state["current"]["current_fw_version"] and \
                info.get("fw_title") == state["current"]["current_fw_title"]:
            return
        state["info"] = info
        state["data"], state["chunk"] = b"", 0
        state["fw_request_id"] += 1
        telemetry(client, dict(state["current"], fw_state="DOWNLOADING"))
        request_chunk(client)
    elif topic == "v2/fw/error":
        finish(2, "server error: %s" % msg.payload.decode())
    elif topic.startswith("v2/fw/response/%d/chunk/" % state["fw_request_id"]):
        state["data"] += msg.payload
        state["chunk"] += 1
        size = state["info"]["fw_size"]
        if len(state["data"]) >= size or not msg.payload:
            process(client)
        else:
            request_chunk(client)


def process(client):
    info, data = state["info"], state["data"]
    telemetry(client, dict(state["current"], fw_state="DOWNLOADED"))
    if len(data) != info["fw_size"] or checksum(info["fw_checksum_algorithm"], data) != info["fw_checksum"]:
        telemetry(client, dict(state["current"], fw_state="FAILED", fw_error="checksum verification failed"))
        finish(5, "checksum mismatch: %d bytes, %s %s, got %s" % (
            len(data), info["fw_checksum_algorithm"], info["fw_checksum"],
            checksum(info["fw_checksum_algorithm"], data)))
        return
    telemetry(client, dict(state["current"], fw_state="VERIFIED"))
    telemetry(client, dict(state["current"], fw_state="UPDATING"))
    state["current"] = {"current_fw_title": info["fw_title"], "current_fw_version": info["fw_version"]}
    result["last"] = client.publish("v1/devices/me/telemetry", json.dumps(dict(state["current"], fw_state="UPDATED")), qos=1)
    finish(0, "UPDATED %s" % state["current"]["current_fw_version"])


try:  # paho-mqtt 2 asks which callback API the caller speaks
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION1, client_id="tb-sdk-device")
except AttributeError:
    client = mqtt.Client(client_id="tb-sdk-device")
client.tls_set(ca_certs=ca, certfile=cert, keyfile=key, tls_version=ssl.PROTOCOL_TLS_CLIENT)
client.on_connect = on_connect
client.on_message = on_message
client.connect(host, port, keepalive=60)
client.loop_start()
done.wait(timeout)
if "last" in result:  # the UPDATED report is acknowledged before leaving
    result["last"].wait_for_publish()
client.loop_stop()
client.disconnect()
print(result["text"])
sys.exit(result["code"])
