"""Fixtures shared by the test files."""
import shutil

import pytest


@pytest.fixture(scope="session")
def c_compiler():
    """The first C compiler on PATH (cc, gcc, clang), for the tests that build C programs."""
    for name in ("cc", "gcc", "clang"):
        if shutil.which(name):
            return name
    pytest.fail("no C compiler on PATH (cc, gcc or clang) to build the test's C program")
