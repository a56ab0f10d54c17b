"""Build the optional accelerator (aioipc/_core/*.c, one module); everything else is in pyproject.toml.

The extension is optional: without a C compiler or the Python headers the
install still succeeds, and aioipc runs its pure-Python paths.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "aioipc._core._speedups",
            [
                "aioipc/_core/_speedups.c",
                "aioipc/_core/_ring.c",
                "aioipc/_core/_fastop.c",
                "aioipc/_core/_mq.c",
                "aioipc/_core/_mqcore.c",
                "aioipc/_core/_message.c",
                "aioipc/_core/_framer.c",
                "aioipc/_core/_fdsend.c",
            ],
            depends=["aioipc/_core/_speedups.h"],
            optional=True,
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"],
        )
    ]
)
