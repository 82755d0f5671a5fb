"""models.mlp: the demo's classifier."""

import numpy as np

from tf_codistill.models import mlp


def test_shapes_and_layer_names():
    model = mlp.mlp_classifier(input_dim=5, num_classes=3, hidden_units=(7, 4), dropout=0.5)
    assert model.output_shape == (None, 3)
    assert [layer.units for layer in model.layers if hasattr(layer, "units")] == [7, 4, 3]
    assert model.get_layer("hidden_1").units == 4 and model.get_layer("dropout_0").rate == 0.5
    logits = model(np.zeros((2, 5), np.float32), training=False)
    assert logits.shape == (2, 3)
    # 5*7+7 + 7*4+4 + 4*3+3 parameters.
    assert model.count_params() == 42 + 32 + 15
