"""Universal Proposal Network (UPN): the DETR-family proposal model of ChatRex."""
