# fmt: off
# The lab's sender.py (Modul 11 report), code verbatim. It sends on the OS's default interface:
# run it only inside a network namespace (tests/test_multicast_netns.py does).
import socket

group = '224.1.1.1'

port = 5004

# 2-hop restriction in network ttl=2

ttl = 2

sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)

while True:

    pesan = input("Masukkan pesan: ")
    sock.sendto(pesan.encode('utf-8'), (group, port))
