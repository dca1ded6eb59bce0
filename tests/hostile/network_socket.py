import socket

from tests.hostile._base import Uniform

PORT = 47391  # the test listens here on loopback, outside any sandbox


class Exfiltrator(Uniform):
    def setup(self, ctx):
        super().setup(ctx)
        with socket.create_connection(("127.0.0.1", PORT), timeout=3) as connection:
            connection.sendall(b"stolen")
