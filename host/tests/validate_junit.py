"""Validates a JUnit XML report against the JUnit XSD that pytest publishes.

Usage: python3 validate_junit.py REPORT.xml CACHE_DIR

The schema is `junit-10.xsd` (Jenkins xunit plugin's JUnit schema), shipped in pytest's
source distribution under testing/example_scripts/, fetched once from PyPI into CACHE_DIR.
The validator is the `xmlschema` package, installed once into CACHE_DIR. Exit 0 when the
report is valid, 1 when it is not (the errors are printed), 2 when the tools cannot be set up.
"""
import os
import subprocess
import sys
import tarfile

PYTEST = "pytest==8.3.3"
XMLSCHEMA = "xmlschema==3.4.3"
MEMBER = "pytest-8.3.3/testing/example_scripts/junit-10.xsd"


def pip(*args):
    subprocess.run([sys.executable, "-m", "pip", "-q", "--disable-pip-version-check", *args],
                   check=True)


def main():
    report, cache = sys.argv[1], sys.argv[2]
    os.makedirs(cache, exist_ok=True)
    lib = os.path.join(cache, "pylib")
    xsd = os.path.join(cache, "junit-10.xsd")
    try:
        if not os.path.isdir(os.path.join(lib, "xmlschema")):
            pip("install", "--target", lib, XMLSCHEMA)
        if not os.path.exists(xsd):
            pip("download", "--no-deps", "--no-binary", ":all:", PYTEST, "-d", cache)
            with tarfile.open(os.path.join(cache, "pytest-8.3.3.tar.gz")) as tar:
                data = tar.extractfile(MEMBER).read()
            with open(xsd + ".tmp", "wb") as f:
                f.write(data)
            os.replace(xsd + ".tmp", xsd)
    except Exception as e:  # noqa: BLE001 - report any setup failure plainly
        print(f"cannot set up the JUnit schema or validator: {e}", file=sys.stderr)
        return 2
    sys.path.insert(0, lib)
    import xmlschema  # noqa: E402

    schema = xmlschema.XMLSchema(xsd)
    errors = list(schema.iter_errors(report))
    for e in errors:
        print(e, file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
