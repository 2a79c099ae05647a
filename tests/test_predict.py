"""`spg predict` output naming: one map file per input, never overwritten by a namesake."""

from spg_core.predict import map_names


def test_namesakes_in_defect_folders_get_their_folder_prefixed():
    names = map_names(
        ["/d/pill/test/good/000.png", "/d/pill/test/stain/000.png", "/d/plug/test/stain/000.png", "shots/a.jpg"]
    )
    assert names == ["good_000_map.png", "pill_test_stain_000_map.png", "plug_test_stain_000_map.png", "a_map.png"]


def test_repeated_and_rootless_inputs_stay_distinct():
    names = map_names(["x/a.png", "x/a.png", "a.tif", "b.png"])
    assert len(set(names)) == 4
    assert names[3] == "b_map.png" and all(n.endswith("_map.png") and "/" not in n for n in names)
