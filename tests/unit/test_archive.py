from tasks.build.archive import model_name


def test_model_name_follows_the_tutorial_pattern():
    assert model_name(128, 6) == "bert-max_length128-batch_size6"


def test_model_name_differs_per_shape():
    assert len({model_name(128, 6), model_name(64, 6), model_name(128, 8)}) == 3
