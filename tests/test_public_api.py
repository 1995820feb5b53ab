import subprocess
import sys

import keras_cost
from keras_cost.callbacks.cost import CostCallback
from keras_cost.callbacks.prune import PruneCallback
from keras_cost.distillation.distiller import DistillerModel
from keras_cost.quantization.export import export_tflite
from keras_cost.quantization.wrapper import QuantizeWrapper


def test_flat_names_are_the_submodule_objects():
    assert keras_cost.PruneCallback is PruneCallback
    assert keras_cost.CostCallback is CostCallback
    assert keras_cost.DistillerModel is DistillerModel
    assert keras_cost.QuantizeWrapper is QuantizeWrapper
    assert keras_cost.export_tflite is export_tflite


def test_import_registers_classes_for_loading():
    # A fresh process: registration must come from `import keras_cost` alone.
    code = (
        "import keras, keras_cost\n"
        "names = ['PruningMask', 'QuantizeWrapper', 'DistillerModel', 'LBFGS', 'ConstantSparsity']\n"
        "missing = [n for n in names if keras.saving.get_registered_object('keras_cost>' + n) is None]\n"
        "print(missing)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"
