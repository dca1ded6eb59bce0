"""Writes 2 GiB into its work directory from the (untimed) scorer setup: twice the disk quota."""

from tests.hostile._base import Uniform

CHUNK = b"\xa5" * (16 << 20)


class FillsDisk(Uniform):
    def setup(self, ctx):
        super().setup(ctx)
        if ctx.role != "scorer":
            return
        written = 0
        for number in range(16):  # 128 MiB files: under the per-file size limit
            with open(f"filler-{number}.bin", "wb") as handle:
                for _ in range(8):
                    handle.write(CHUNK)
                    written += len(CHUNK)
        print(f"disk_fill: wrote {written >> 20} MiB", flush=True)
