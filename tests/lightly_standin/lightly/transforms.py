from torchvision import transforms as T

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


class SimSiamTransform:
    """Two views of a PIL image: random resized crop (scale 0.2-1), flip, colour jitter (p 0.8),
    grayscale (p 0.2), ImageNet normalisation."""

    def __init__(self, input_size: int = 224):
        self.view = T.Compose(
            [
                T.RandomResizedCrop(input_size, scale=(0.2, 1.0)),
                T.RandomHorizontalFlip(),
                T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
                T.RandomGrayscale(0.2),
                T.ToTensor(),
                T.Normalize(*IMAGENET),
            ]
        )

    def __call__(self, image):
        return [self.view(image), self.view(image)]
