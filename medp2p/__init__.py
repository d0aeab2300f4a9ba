"""medp2p: medical image-to-image translation (MRI->CT, tumour masks, inpainting) with pix2pix."""

__version__ = "0.1.0"
