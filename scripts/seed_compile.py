"""The seed recipe's compile.py, verbatim in logic (glob, json.load, skip samples without width,
pandas DataFrame, to_parquet): the baseline the benchmarks compare against. Run inside ROOT's parent
with the data folder as argument."""

import glob
import json
import os
import sys

import pandas as pd

folder = sys.argv[1]
out = sys.argv[2]
json_files = glob.glob(os.path.join(folder, "*.json"))
data = []
for file_path in json_files:
    with open(file_path) as file:
        content = json.load(file)
        if "width" not in content:
            continue
        text_path = os.path.splitext(content["image_name"])[0] + ".txt"
        width = int(content["width"])
        height = int(content["height"])
        caption = content["short_caption"]
        filename = content["image_name"]
        data.append({"width": width, "height": height, "caption": caption, "filename": filename})
df = pd.DataFrame(data, columns=["width", "height", "caption", "filename"])
df.to_parquet(out, index=False)
print(len(df))
