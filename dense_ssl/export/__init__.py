"""Export of pretrained encoders to PyTorch (torchvision, Detectron2).

  torchvision_names.py  Flax ResNet tree -> torchvision state_dict (pure numpy)
  detectron2_names.py   torchvision names <-> Detectron2 names, FPN names,
                        the Detectron2 config keys of an architecture
  torch_reference.py    torch-side checks: strict load, Flax vs torch outputs
The command line is dense_ssl/convert.py.
"""
