"""kit.identity: content hashes that tell data apart (rows of a manifest, image paths, patients)."""
import numpy as np
import pandas as pd

from kit import identity

ROWS = pd.DataFrame({"image": ["/d/a.png", "/d/b.png", "/d/c.png", "/d/e.png"], "label": [0, 1, 0, 1],
                     "patient": ["1", "2", "3", "4"], "split": ["train", "train", "val", "test"]})


def test_rows_hash_is_the_content_in_any_order():
    assert identity.rows_hash(ROWS) == identity.rows_hash(ROWS.iloc[::-1]) == identity.rows_hash(ROWS.assign(x=1))
    for column, value in (("label", 0), ("split", "val"), ("patient", "9"), ("image", "/d/z.png")):
        changed = ROWS.copy()
        changed.loc[1, column] = value
        assert identity.rows_hash(changed) != identity.rows_hash(ROWS), column
    multilabel = ROWS.drop(columns="label").assign(labels=["x", "x|y", "", "y"])
    assert len(identity.rows_hash(multilabel)) == 16


def test_data_identity_is_the_train_and_val_rows():
    meta = {"key": "shenzhen", "task": "multiclass", "classes": ("normal", "tuberculosis")}
    found = identity.data_identity(ROWS, meta)
    assert found == {"key": "shenzhen", "task": "multiclass", "classes": ["normal", "tuberculosis"],
                     "rows": identity.rows_hash(ROWS[ROWS["split"] != "test"]), "train": 2, "val": 1}
    retested = ROWS.assign(image=ROWS["image"].where(ROWS["split"] != "test", "/d/other.png"))
    assert identity.data_identity(retested, meta) == found  # the test rows are not what a run learns from


def test_key_hashes_and_patient_keys():
    hashes = identity.hash64(["a", "b", "a"])
    assert hashes.dtype == np.int64 and hashes[0] == hashes[2] != hashes[1]
    keys = identity.key_hashes(["b", "a", "b"])
    assert keys.tolist() == sorted({int(h) for h in identity.hash64(["a", "b"])})
    assert identity.patient_keys(ROWS, "shenzhen").tolist() == ["shenzhen/1", "shenzhen/2", "shenzhen/3", "shenzhen/4"]
    aggregated = pd.DataFrame({"patient": ["chestxray14/7", "eyepacs/7"]})
    assert identity.patient_keys(aggregated, "all").tolist() == ["chestxray14/7", "eyepacs/7"]
