"""The lab's client1.py, as the report gives it, as a real peer for tests.

Only the address changed: the lab connects to socket.gethostname() port 8080; tests pass the
host and port of the server they started on 127.0.0.1 (argv[1], argv[2]). Everything else is
the lab's: recv(1024) the welcome, then in lockstep recv(1024) / print / input() / send() with
no newline.
"""

import socket
import sys

host = sys.argv[1]
port = int(sys.argv[2])

client_socket = socket.socket()
client_socket.connect((host, port))

print("Menyambungkan ke Server")
message = client_socket.recv(1024).decode()
print("Pesan dari Server:", message)

while True:
    message = client_socket.recv(1024).decode()
    print("Server:", message)
    new_message = input("Masukkan Pesan: ")
    client_socket.send(new_message.encode())
    print("Pesan Terkirim")
