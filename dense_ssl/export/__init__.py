"""Export of pretrained encoders to PyTorch (torchvision, Detectron2).

  torchvision_format.py  Flax ResNet -> torchvision state_dict: names and
                         shapes derived from models/resnet.py's layout, the
                         torchvision network they load into, the .pth file
  detectron2_format.py   torchvision names <-> Detectron2 names, FPN names,
                         the Detectron2 config keys of an architecture, the
                         .pkl pickle
  conversion.py          one conversion of a checkpoint's encoder
                         (dense_ssl.checkpoint.restore_encoder): architecture
                         checks, tensors with their sources, skipped tensors
                         with reasons, the listing, writing the file
  verify.py              runs the Flax encoder and the converted torch network
                         on the same batch and compares C2..C5
The command line is dense_ssl/convert.py.
"""
