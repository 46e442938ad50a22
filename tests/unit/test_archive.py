from serving.contract import CLASS_NAMES, ModelInfo


def _info(**shape) -> ModelInfo:
    return ModelInfo(kind="bi-encoder", backend="cpu", buckets=[shape["max_length"]], model_files={},
                     class_names=list(CLASS_NAMES), source="test", parity_max_abs_diff=0.0, **shape)


def test_the_registered_name_follows_the_tutorial_pattern():
    assert _info(max_length=128, batch_size=6).model_name == "bert-max_length128-batch_size6"


def test_each_traced_shape_gets_its_own_name():
    names = {_info(max_length=128, batch_size=6).model_name, _info(max_length=64, batch_size=6).model_name,
             _info(max_length=128, batch_size=8).model_name}
    assert len(names) == 3
